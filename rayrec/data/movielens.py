"""MovieLens importers: the ml-latest-small layout (also ml-latest, ml-20m, ml-25m) and ml-100k.

Items get the text the encoder reads (``Title. Genres: a, b. Tags: x, y.``), tags scrubbed; ratings become
``rating`` interactions with pseudonymized user ids. Bad rows follow :mod:`rayrec.data.tables`: an error
naming the file and row, or with ``skip_bad_rows`` dropped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec import storage
from rayrec.data.schema import ITEMS_SCHEMA
from rayrec.data.tables import (
    NO_GENRE,
    ImportReport,
    InputTable,
    Interactions,
    Progress,
    first_of_lists,
    group_lists,
    read_text_table,
    say,
    split_tags,
    write_import,
)
from rayrec.data.validate import as_array
from rayrec.errors import DataError
from rayrec.privacy import scrub_array

ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""ml-100k's genre flag columns, in ``u.item`` order, when the folder has no ``u.genre``."""


def detect_movielens(src: str) -> str:
    """``ml-latest-small`` (movies.csv + ratings.csv; also ml-latest, ml-20m, ml-25m) or ``ml-100k``."""
    if storage.exists(storage.join(src, "movies.csv")) and storage.exists(storage.join(src, "ratings.csv")):
        return "ml-latest-small"
    if storage.exists(storage.join(src, "u.item")) and storage.exists(storage.join(src, "u.data")):
        return "ml-100k"
    if not storage.exists(src):
        raise DataError(f"{src}: no such directory")
    raise DataError(
        f"{src}: not a MovieLens folder (expected movies.csv and ratings.csv as in ml-latest-small, "
        "or u.item and u.data as in ml-100k)"
    )


def import_movielens(
    src: str, out: str, *, skip_bad_rows: bool = False, progress: Progress | None = None
) -> ImportReport:
    """Import a MovieLens folder into the dataset directory ``out`` (layout detected from its files)."""
    layout = detect_movielens(src)
    say(progress, f"{src}: {layout} layout")
    reader = _read_ml_latest if layout == "ml-latest-small" else _read_ml_100k
    items, interactions, inputs = reader(src, skip_bad_rows, progress)
    return write_import(layout, out, items, interactions, inputs, progress)


def compose_text(title: pa.Array, sections: Sequence[tuple[str, pa.ListArray]]) -> pa.Array:
    """``Title. Genres: a, b. Tags: x, y.``: what the encoder reads; empty sections are left out."""
    pieces = [pc.binary_join_element_wise(title, "", ".")]  # the title's own text, year included
    for label, lists in sections:
        joined = pc.fill_null(pc.binary_join(lists, ", "), "")
        piece = pc.binary_join_element_wise(f"{label}: ", joined, ".", "")
        pieces.append(pc.if_else(pc.greater(pc.utf8_length(joined), 0), piece, ""))
    return pc.utf8_trim_whitespace(pc.binary_join_element_wise(*pieces, " "))


def _tags_by_item(item_ids: pa.Array, tag_items: pa.Array, tags: pa.Array) -> pa.ListArray:
    """[n items] distinct scrubbed lower-case tags per item, most used first."""
    cleaned = pc.utf8_lower(scrub_array(tags))
    table = pa.table({"item": tag_items, "tag": cleaned}).filter(pc.greater(pc.utf8_length(cleaned), 0))
    counted = table.group_by(["item", "tag"]).aggregate([("tag", "count")])
    position = pc.index_in(counted.column("item"), value_set=item_ids)
    counted = counted.append_column("position", position).sort_by(
        [("position", "ascending"), ("tag_count", "descending"), ("tag", "ascending")]
    )
    parents = as_array(counted.column("position")).to_numpy(zero_copy_only=False)
    return group_lists(parents, as_array(counted.column("tag")), len(item_ids))


def _items_table(
    item_ids: pa.Array, titles: pa.Array, genres: pa.ListArray, tags: pa.ListArray | None
) -> pa.Table:
    sections = [("Genres", genres)] + ([("Tags", tags)] if tags is not None else [])
    return pa.table(
        {
            "item_id": item_ids,
            "title": titles,
            "text": compose_text(titles, sections),
            "category": first_of_lists(genres),
            "tags": genres,
        },
        schema=ITEMS_SCHEMA,
    )


def _read_ml_latest(
    src: str, skip: bool, progress: Progress | None
) -> tuple[pa.Table, Interactions, list[InputTable]]:
    """``movies.csv``, optional ``tags.csv`` (folded into item text) and ``ratings.csv``."""
    movies = read_text_table(storage.join(src, "movies.csv"), skip_bad_rows=skip)
    say(progress, f"read movies.csv: {movies.table.num_rows:,} rows")
    item_ids = movies.ids("movieId", integer=True)
    movies.reject_duplicates(item_ids, "movieId")
    titles, genres = movies.texts("title"), movies.column("genres")
    movies.rows.reject(
        pc.equal(pc.utf8_length(titles), 0).to_numpy(zero_copy_only=False), "title", lambda _: "empty title"
    )
    keep = pa.array(~movies.rows.bad)
    item_ids, titles, genres = pc.filter(item_ids, keep), pc.filter(titles, keep), pc.filter(genres, keep)
    inputs = [movies]
    tags = None
    tags_path = storage.join(src, "tags.csv")
    if storage.exists(tags_path):
        tag_rows = read_text_table(tags_path, skip_bad_rows=skip)
        tag_items = tag_rows.ids("movieId", integer=True)
        tag_rows.reject_unknown(tag_items, item_ids, "movieId", "movies.csv")
        tag_text = tag_rows.texts("tag")
        keep_tags = pa.array(~tag_rows.rows.bad)
        tags = _tags_by_item(item_ids, pc.filter(tag_items, keep_tags), pc.filter(tag_text, keep_tags))
        inputs.append(tag_rows)
        say(progress, f"read tags.csv: {tag_rows.table.num_rows:,} tags folded into item text")
    items = _items_table(item_ids, titles, split_tags(genres), tags)
    ratings = read_text_table(storage.join(src, "ratings.csv"), skip_bad_rows=skip)
    say(progress, f"read ratings.csv: {ratings.table.num_rows:,} rows")
    inputs.append(ratings)
    return (
        items,
        _ratings(ratings, ("userId", "movieId", "rating", "timestamp"), item_ids, "movies.csv"),
        inputs,
    )


def _ratings(ratings: InputTable, names: Sequence[str], item_ids: pa.Array, items_name: str) -> Interactions:
    """(user, item, timestamp, event, value) columns of a MovieLens ratings table, bad rows dropped."""
    user, item, rating, timestamp = names
    columns = [
        ratings.ids(user, integer=True, private=True),
        ratings.ids(item, integer=True),
        ratings.numbers(timestamp, pa.int64()),
        "rating",
        ratings.numbers(rating, pa.float32()),
    ]
    ratings.reject_unknown(columns[1], item_ids, item, items_name)
    keep = pa.array(~ratings.rows.bad)
    return tuple(column if isinstance(column, str) else pc.filter(column, keep) for column in columns)


def _read_ml_100k(
    src: str, skip: bool, progress: Progress | None
) -> tuple[pa.Table, Interactions, list[InputTable]]:
    """``u.item`` (latin-1, ``|``), ``u.data`` (tab); ``u.user`` holds demographics and is not imported."""
    genre_path = storage.join(src, "u.genre")
    genre_names = ML_100K_GENRES
    if storage.exists(genre_path):
        genre_table = read_text_table(
            genre_path, delimiter="|", encoding="latin-1", column_names=["name", "index"], quoted=False
        )
        genre_names = tuple(genre_table.table.column("name").to_pylist())
    flags = [f"genre:{name}" for name in genre_names]
    movies = read_text_table(
        storage.join(src, "u.item"),
        delimiter="|",
        encoding="latin-1",
        column_names=["movie id", "movie title", "release date", "video release date", "IMDb URL", *flags],
        quoted=False,
        skip_bad_rows=skip,
    )
    say(progress, f"read u.item: {movies.table.num_rows:,} rows")
    item_ids = movies.ids("movie id", integer=True)
    movies.reject_duplicates(item_ids, "movie id")
    titles = movies.texts("movie title")
    matrix = np.zeros((movies.table.num_rows, len(flags)), dtype=bool)
    for j, flag in enumerate(flags):
        values = as_array(movies.table.column(flag))
        movies.rows.reject(
            ~pc.is_in(values, pa.array(["0", "1"])).to_numpy(zero_copy_only=False),
            flag,
            lambda i, values=values: f"genre flag {values[i].as_py()!r} is not 0 or 1",
        )
        if genre_names[j] not in NO_GENRE:
            matrix[:, j] = pc.equal(values, "1").to_numpy(zero_copy_only=False)
    keep = ~movies.rows.bad
    rows, cols = np.nonzero(matrix[keep])
    genres = group_lists(
        rows, pa.array(np.asarray(genre_names, dtype=object)[cols], pa.string()), int(keep.sum())
    )
    item_ids, titles = pc.filter(item_ids, pa.array(keep)), pc.filter(titles, pa.array(keep))
    items = _items_table(item_ids, titles, genres, None)
    ratings = read_text_table(
        storage.join(src, "u.data"),
        delimiter="\t",
        column_names=["user id", "item id", "rating", "timestamp"],
        quoted=False,
        skip_bad_rows=skip,
    )
    say(progress, f"read u.data: {ratings.table.num_rows:,} rows")
    columns = _ratings(ratings, ("user id", "item id", "rating", "timestamp"), item_ids, "u.item")
    return items, columns, [movies, ratings]
