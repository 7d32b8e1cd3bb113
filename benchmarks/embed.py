"""Embedding throughput of ``build-index`` (Ray Data actor pool) next to sentence-transformers' ``encode()``.

    python -m benchmarks.embed [--items 2000] [--model sentence-transformers/all-MiniLM-L6-v2] [--concurrency 2]

Same items (MovieLens-small texts when ../shared/data is present, else synthetic titles), same model, same
run. ``encode()`` runs in this process with every core (batch 64, its defaults otherwise); build-index is
measured end to end (items read, Ray Data actor start-up, embedding, FAISS flat index, files written) and for
the embedding stage alone (as build-index reports it). The ratio is items/s against ``encode()``.
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
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--concurrency", type=int, default=2, help="build-index encoder actors")
    parser.add_argument("--batch-size", type=int, default=128, help="build-index batch size")
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from rayrec.encoding import item_texts, resolve_model
    from rayrec.index.build import BuildIndexConfig, build_index
    from rayrec.runtime import init_ray

    with tempfile.TemporaryDirectory(prefix="rayrec-bench-embed-") as tmp:
        root = Path(tmp)
        texts = item_texts(catalog(args.items, root))
        model = SentenceTransformer(resolve_model(args.model), device="cpu")
        model.encode(texts[:64], batch_size=64)  # warm-up
        started = time.perf_counter()
        model.encode(texts, batch_size=64)
        st_seconds = time.perf_counter() - started
        threads = torch.get_num_threads()
        del model

        init_ray(None)  # started outside the measurement, as a cluster would already be up
        started = time.perf_counter()
        report = build_index(
            BuildIndexConfig(
                data=str(root / "data"),
                out=str(root / "index"),
                encoder=args.model,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
            )
        )
        total_seconds = time.perf_counter() - started

    n = len(texts)
    rows = [
        (f"sentence-transformers encode() (batch 64, {threads} threads)", st_seconds),
        (f"build-index, embedding stage ({args.concurrency} actors)", report["embed_seconds"]),
        ("build-index, end to end", total_seconds),
    ]
    print(f"\n{n} items, {args.model}\n")
    print("| method | seconds | items/s | vs encode() |")
    print("| --- | --- | --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {n / seconds:,.0f} | {st_seconds / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
