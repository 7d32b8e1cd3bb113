"""A small pipeline step that the two-node test submits with ``rayrec submit``.

It connects through :func:`rayrec.runtime.init_ray` (inside a job ``RAY_ADDRESS`` names the cluster),
runs one Ray task per node, each pinned by the node's custom resource, each writing a Parquet shard
through :mod:`rayrec.storage` to shared storage, and reads the shards back on the driver. It prints one
``RESULT {json}`` line: which node wrote each shard, how many rows came back, and where ``rayrec`` was
imported from (the uploaded working directory, not this checkout).
"""

from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq
import ray

import rayrec
from rayrec import storage
from rayrec.runtime import init_ray


@ray.remote(num_cpus=1)
def write_shard(out: str, shard: str, rows: int) -> str:
    """Write ``rows`` rows tagged with this node's id to ``out/part-<shard>.parquet``; returns the node id."""
    node_id = ray.get_runtime_context().get_node_id()
    table = pa.table({"item_id": [f"{shard}-{i}" for i in range(rows)], "node_id": [node_id] * rows})
    fs, path = storage.resolve(storage.join(out, f"part-{shard}.parquet"))
    pq.write_table(table, path, filesystem=fs)
    return node_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="shared directory or URI for the shards")
    parser.add_argument("--resource", action="append", required=True, help="one custom resource per node")
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args()

    init_ray()
    storage.makedirs(args.out)
    refs = {
        name: write_shard.options(resources={name: 1}).remote(args.out, name, args.rows)
        for name in args.resource
    }
    writers = dict(zip(refs, ray.get(list(refs.values())), strict=True))
    fs, path = storage.resolve(args.out)
    merged = pq.read_table(path, filesystem=fs)
    result = {
        "writers": writers,
        "rows": merged.num_rows,
        "row_nodes": sorted(set(merged.column("node_id").to_pylist())),
        "driver_node": ray.get_runtime_context().get_node_id(),
        "rayrec_path": rayrec.__file__,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
