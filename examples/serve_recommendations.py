"""World → index → serve: a synthetic catalog, its FAISS index, and a Ray Serve A/B app answering over HTTP.

    python examples/serve_recommendations.py --out runs/example-serve

:func:`rayrec.synth.write_world` writes a synthetic dataset, :func:`rayrec.index.build_index` embeds it with Ray
Data into a FAISS index (with the packaged all-MiniLM-L6-v2 when ``--encoder`` names it; by default a tiny
local BERT built from the item texts, so nothing is downloaded), :func:`serving.app.build_app_from_config`
builds the Serve application with two arms, and plain HTTP asks it for a slate and reports a click.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import pyarrow.parquet as pq
from ray import serve

from rayrec.encoding import build_tiny_encoder, item_texts
from rayrec.index import BuildIndexConfig, build_index
from rayrec.runtime import init_ray
from rayrec.synth import WorldConfig, write_world
from serving.app import build_app_from_config
from serving.settings import AppConfig

APP = "rayrec-example"
ROUTE = "/example"


def main(
    out: str, port: int = 8000, encoder: str | None = None, items: int = 300, keep: bool = False
) -> dict:
    """Build the index, serve it at ``http://127.0.0.1:PORT/example``, ask for a slate; returns the answer."""
    root = Path(out)
    write_world(WorldConfig(items=items, users=50, topics=4, seed=0), str(root / "data"))
    if encoder is None:
        texts = item_texts(pq.read_table(root / "data" / "items.parquet"))
        encoder = str(build_tiny_encoder(texts, root / "encoder"))
    build_index(BuildIndexConfig(data=str(root / "data"), out=str(root / "index"), encoder=encoder))
    config = AppConfig(
        index=str(root / "index"), arms=["control=retrieval", "treatment=greedy"], events=str(root / "events")
    )
    init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": port})  # joins a running Serve as it is
    serve.run(build_app_from_config(config), name=APP, route_prefix=ROUTE)
    url = f"http://127.0.0.1:{port}{ROUTE}"
    try:
        history = pq.read_table(root / "data" / "interactions.parquet").column("item_id").to_pylist()[:3]
        answer = httpx.post(f"{url}/recommend", json={"user_id": "alice", "history": history, "k": 5}).json()
        click = {
            "request_id": answer["request_id"],
            "item_id": answer["items"][0]["item_id"],
            "event": "click",
        }
        status = httpx.post(f"{url}/feedback", json=click).status_code
        print(f"arm {answer['arm']}: {[item['item_id'] for item in answer['items']]}; feedback → {status}")
        return {"answer": answer, "feedback_status": status}
    finally:
        if not keep:
            serve.delete(APP)  # returns once the event logger has written every acknowledged event


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--encoder", default=None, help="a model name or directory (default: a tiny local BERT)"
    )
    main(**vars(parser.parse_args()))
