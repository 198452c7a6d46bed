// calibserve dashboard: refresh the content in place every data-refresh seconds, never while the tab is
// hidden, and on demand when it becomes visible again. No library, no inline script (the page's CSP forbids it).
(() => {
  "use strict";
  const root = document.getElementById("dashboard");
  if (!root) return;
  const seconds = Number(root.dataset.refresh) || 30;
  const status = document.getElementById("refresh-status");
  const toggle = document.getElementById("refresh-toggle");
  const content = document.getElementById("content");
  let paused = false;
  let inFlight = false;

  async function refresh() {
    if (paused || document.hidden || inFlight) return;
    inFlight = true;
    try {
      const response = await fetch(root.dataset.content, { cache: "no-store", headers: { accept: "text/html" } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const open = new Set([...content.querySelectorAll("details[open]")].map((d) => d.id || d.querySelector("summary").textContent));
      content.innerHTML = await response.text();
      content.querySelectorAll("details").forEach((d) => {
        if (open.has(d.id || d.querySelector("summary").textContent)) d.open = true;
      });
      status.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC; next in " + seconds + " s";
      root.dataset.refreshes = String(Number(root.dataset.refreshes || 0) + 1);
    } catch (error) {
      status.textContent = "refresh failed (" + error.message + "); trying again in " + seconds + " s";
    } finally {
      inFlight = false;
    }
  }

  setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.setAttribute("aria-pressed", String(paused));
    toggle.textContent = paused ? "Resume auto-refresh" : "Pause auto-refresh";
    status.textContent = paused ? "auto-refresh paused" : "auto-refresh resumed";
    if (!paused) refresh();
  });
})();
