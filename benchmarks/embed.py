"""Embedding throughput of ``build-index`` next to sentence-transformers' ``encode()``, measured in the same run.

    python -m benchmarks.embed [--items 2000] [--repeats 3] [--model sentence-transformers/all-MiniLM-L6-v2]
        [--concurrency 2] [--no-ray] [--quick]

Same items (MovieLens-small texts when ../shared/data is present, else synthetic titles), same model, same
process for ``encode()`` and the in-process build-index (``--embed local``): each repeat times ``encode()``
(batch 64, its defaults otherwise, every core) and then build-index, interleaved so that load from other
processes on a shared machine hits both alike; the medians are compared. build-index's embedding stage includes
loading the model (``encode()``'s timing does not), its end-to-end figure also reads the items and writes the
FAISS flat index. The Ray Data actor path (``--embed ray``) is timed once after (actor start-up included in its
end-to-end figure). The vectors are checked against ``encode()``'s. The ratio is items/s against ``encode()``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MOVIELENS = REPO.parent / "shared" / "data" / "movielens-small"


def catalog(n: int, out: Path):
    """An items table of ``n`` items written under ``out`` (MovieLens texts when available)."""
    import pyarrow as pa

    from rayrec.data.io import read_items, write_items

    if (MOVIELENS / "movies.csv").exists():
        from rayrec.data.movielens import import_movielens

        import_movielens(str(MOVIELENS), str(out / "ml"))
        items = read_items(str(out / "ml"))
        items = (
            pa.concat_tables([items] * (n // items.num_rows + 1)).slice(0, n) if n > items.num_rows else items
        )
        items = items.set_column(0, "item_id", pa.array([f"i{i}" for i in range(items.num_rows)]))
        items = items.slice(0, n)
    else:
        words = ["space", "night", "love", "war", "river", "city", "ghost", "summer", "king", "dream"]
        titles = [f"The {words[i % 10]} of {words[(i // 10) % 10]} {i}" for i in range(n)]
        genres = [["Drama", "Comedy", "Action", "Horror"][i % 4] for i in range(n)]
        items = pa.table(
            {
                "item_id": [f"i{i}" for i in range(n)],
                "title": titles,
                "text": [f"{t}. Genres: {g}." for t, g in zip(titles, genres, strict=True)],
                "category": genres,
                "tags": [[g] for g in genres],
            }
        )
    write_items(items, str(out / "data"))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved timings of each in-process method"
    )
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--concurrency", type=int, default=2, help="build-index --embed ray: encoder actors")
    parser.add_argument("--batch-size", type=int, default=128, help="build-index batch size")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data actor path")
    parser.add_argument("--quick", action="store_true", help="500 items, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.repeats = min(args.items, 500), min(args.repeats, 2)

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from rayrec.encoding import item_texts, resolve_model
    from rayrec.index.build import BuildIndexConfig, build_index
    from rayrec.index.item_index import ItemIndex

    def timed_build(root: Path, mode: str, name: str) -> tuple[dict, float, np.ndarray]:
        started = time.perf_counter()
        report = build_index(
            BuildIndexConfig(
                data=str(root / "data"),
                out=str(root / name),
                encoder=args.model,
                embed=mode,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
            )
        )
        seconds = time.perf_counter() - started
        return report, seconds, ItemIndex.load(str(root / name)).embeddings

    with tempfile.TemporaryDirectory(prefix="rayrec-bench-embed-") as tmp:
        root = Path(tmp)
        texts = item_texts(catalog(args.items, root))
        model = SentenceTransformer(resolve_model(args.model), device="cpu")
        model.encode(texts[:64], batch_size=64)  # warm-up
        threads = torch.get_num_threads()
        st_times, local_embed, local_total = [], [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            reference = model.encode(texts, batch_size=64)
            st_times.append(time.perf_counter() - started)
            report, total, local_vectors = timed_build(root, "local", f"index-local-{repeat}")
            local_embed.append(report["embed_seconds"])
            local_total.append(total)
        del model
        ray_row = None
        if not args.no_ray:
            from rayrec.runtime import init_ray

            init_ray(None)  # started outside the measurement, as a cluster would already be up
            report, total, ray_vectors = timed_build(root, "ray", "index-ray")
            ray_row = (report["embed_seconds"], total, float(np.abs(ray_vectors - reference).max()))

    n = len(texts)
    st = float(np.median(st_times))
    rows = [
        (f"sentence-transformers encode() (batch 64, {threads} threads)", st, "median", 0.0),
        (
            "build-index --embed local, embedding stage (model load included)",
            float(np.median(local_embed)),
            "median",
            float(np.abs(local_vectors - reference).max()),
        ),
        ("build-index --embed local, end to end", float(np.median(local_total)), "median", None),
    ]
    if ray_row is not None:
        rows += [
            (
                f"build-index --embed ray, embedding stage ({args.concurrency} actors)",
                ray_row[0],
                "once",
                ray_row[2],
            ),
            (f"build-index --embed ray, end to end ({args.concurrency} actors)", ray_row[1], "once", None),
        ]
    print(f"\n{n} items, {args.model}, {args.repeats} interleaved repeats\n")
    print("| method | seconds | items/s | vs encode() | max abs diff to encode() vectors |")
    print("| --- | --- | --- | --- | --- |")
    for name, seconds, how, diff in rows:
        shown = "" if diff is None else f"{diff:.1e}"
        print(f"| {name} ({how}) | {seconds:.1f} | {n / seconds:,.0f} | {st / seconds:.2f}x | {shown} |")
    paired = [a / b for a, b in zip(st_times, local_embed, strict=True)]
    print(
        "\nper-repeat seconds: encode() "
        + ", ".join(f"{t:.1f}" for t in st_times)
        + "; build-index local embedding "
        + ", ".join(f"{t:.1f}" for t in local_embed)
        + f"; paired ratios {', '.join(f'{r:.2f}' for r in paired)} (median {float(np.median(paired)):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
