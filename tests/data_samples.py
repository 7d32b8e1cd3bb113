"""Small input folders in the real MovieLens layouts, written by the tests, and a leak finder for outputs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

ML100K_USERS = (987654301, 987654302, 987654303)
"""Raw user ids distinctive enough that finding one in an output file can only mean a leak."""


def write_ml100k(folder: Path, *, extra_data_lines: tuple[str, ...] = ()) -> Path:
    """An ml-100k folder: ``u.item`` latin-1 with ``|``, ``u.data`` tab-separated, ``u.genre``, ``u.user``."""
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
              "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
              "War", "Western"]  # fmt: skip
    (folder / "u.genre").write_bytes(
        "".join(f"{g}|{i}\n" for i, g in enumerate(genres)).encode("latin-1") + b"\n"
    )

    def flags(*names: str) -> str:
        return "|".join("1" if g in names else "0" for g in genres)

    children = "Children's"
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy|{flags('Animation', children, 'Comedy')}",
        f"2|Café au lait (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Caf%E9|{flags('Comedy')}",
        f"3|Señor Blues (1996)|01-Jan-1996|||{flags('Drama', 'Romance')}",
        f"4|unknown|||http://us.imdb.com/M/title-exact?x|{flags('unknown')}",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    u1, u2, u3 = ML100K_USERS
    ratings = [
        f"{u1}\t1\t5\t881250949",
        f"{u1}\t2\t3\t881250950",
        f"{u2}\t2\t4\t881250951",
        f"{u2}\t3\t1\t881250952",
        f"{u3}\t4\t2\t881250953",
        *extra_data_lines,
    ]
    (folder / "u.data").write_text("\n".join(ratings) + "\n")
    (folder / "u.user").write_text(
        f"{u1}|24|M|technician|85711\n{u2}|53|F|other|94043\n{u3}|23|M|writer|32067\n"
    )
    return folder


def write_ml_latest(
    folder: Path, *, ratings_lines: tuple[str, ...] = (), tags_lines: tuple[str, ...] = ()
) -> Path:
    """A tiny ml-latest-small folder (``movies.csv``, ``ratings.csv``, ``tags.csv``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Obscure Film (2001),(no genres listed)\n"
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "11,1,4.0,1260759144\n"
        "11,2,3.5,1260759179\n"
        "12,3,2.0,1260759182\n" + "".join(line + "\n" for line in ratings_lines)
    )
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "11,1,pixar,1138537770\n"
        "12,1,Pixar,1138537771\n"
        "12,2,write me at fan@example.com,1138537772\n" + "".join(line + "\n" for line in tags_lines)
    )
    return folder


def output_strings(folder: Path) -> list[str]:
    """Every string value in every Parquet file under ``folder``, and the text of every other file."""
    found: list[str] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            for column in pq.read_table(path).columns:
                found.extend(_strings(column.to_pylist()))
        else:
            found.append(path.read_bytes().decode("utf-8", errors="replace"))
    return found


def _strings(values: list) -> list[str]:
    out = []
    for value in values:
        if isinstance(value, list):
            out.extend(_strings(value))
        elif value is not None:
            out.append(str(value))
    return out


def leaks(folder: Path, raw_ids: list[str]) -> list[str]:
    """Raw ids found as whole values or inside any text under ``folder``."""
    values = output_strings(folder)
    exact = set(values)
    text = "\n".join(values)
    return [raw for raw in raw_ids if raw in exact or (len(raw) > 4 and raw in text)]
