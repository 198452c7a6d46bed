"""Peer 3: LitServe serving the same ONNX model with its dynamic batching on.

    python bench/peers/litserve_onnx.py --port P [--workers N] [--max-batch-size 32] [--batch-timeout 0.002]
        [--loop uvloop] [--http httptools]

``--workers N`` runs N inference workers (``workers_per_device=N`` on one CPU "device") behind N HTTP API
server processes (``num_api_servers=N``). Requests are JSON ``{"instances": [[64 numbers], ...]}``; each
worker collects up to ``--max-batch-size`` requests (waiting at most ``--batch-timeout`` seconds), runs
onnxruntime once on the concatenated rows and answers each request with the same fields as the naive
baseline: per instance ``label``, ``confidence`` and ``probabilities``. Ready: ``GET /health`` is 200.
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve as ls  # type: ignore[import-untyped]
import numpy as np
from common import make_session, render
from numpy.typing import NDArray

Rows = NDArray[np.float32]


class OnnxDigitsAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.session = make_session()

    # No annotation on ``request`` nor on encode_response's return: LitServe reads them to build its FastAPI
    # endpoint, and unannotated means its default path (``await request.json()``, a plain JSON response).
    def decode_request(self, request, **kwargs: Any) -> Rows:  # type: ignore[no-untyped-def]
        return np.asarray(request["instances"], dtype=np.float32).reshape(-1, 64)

    def batch(self, inputs: list[Rows]) -> list[Rows]:
        return inputs  # requests may hold several rows: concatenated in predict, split back after

    def predict(self, x: list[Rows] | Rows, **kwargs: Any) -> list[NDArray[np.float32]] | NDArray[np.float32]:
        if isinstance(x, np.ndarray):  # max_batch_size == 1: one request
            return self._run(x)
        sizes = np.cumsum([len(rows) for rows in x])[:-1]
        return np.split(self._run(np.concatenate(x)), sizes)

    def _run(self, rows: Rows) -> NDArray[np.float32]:
        (probabilities,) = self.session.run(["probabilities"], {"features": rows})
        return np.asarray(probabilities)

    def unbatch(self, output: list[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        return output

    def encode_response(self, output: NDArray[np.float32], **kwargs: Any):  # type: ignore[no-untyped-def]
        return {"predictions": render(output)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    parser.add_argument("--fast-queue", action="store_true", help="ZeroMQ between API servers and workers")
    parser.add_argument("--loop", default="auto", help="uvicorn event loop of the API servers (uvloop, asyncio)")
    parser.add_argument("--http", default="auto", help="uvicorn HTTP parser of the API servers (httptools, h11)")
    args = parser.parse_args()
    api = OnnxDigitsAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, api_path="/v1/predict")
    server = ls.LitServer(
        api, accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=30, fast_queue=args.fast_queue
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.workers,
        log_level="warning",
        generate_client_file=False,
        loop=args.loop,  # passed on to uvicorn.Config
        http=args.http,
    )


if __name__ == "__main__":
    main()
