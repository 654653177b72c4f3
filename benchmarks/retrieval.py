"""Retrieval benchmark: recall@1/5/10 and MRR on APIBench TorchHub and on the Kestrel sample,
for every retrieval setting (dense, BM25, hybrid with RRF or score fusion at several dense
weights, with and without document aggregation), on the index as it was before contextual
chunks ("plain": no document context, no identifier forms, fp32) and as it is now; ingest
throughput of both, alternating; query latency at 10k/100k chunks; peak RSS.

    .venv/bin/python benchmarks/retrieval.py [--data DIR] [--out FILE] [--scale 10000,100000]
        [--only-scale] [--baseline REV]

``--baseline REV`` runs this script as git revision REV had it (in a temporary worktree, same
machine, same run) and reports new/old ratios: the side-by-side with today's code.

Rendering: each of the 94 API records becomes one markdown document through the real ingest
pipeline (parser, chunker, MiniLM, FAISS + SQLite/FTS5):

    # <api_name>: <functionality>
    Domain: <domain>. Framework: <framework>.
    <description>
    API call: `<api_call>`
    Trained on <performance.dataset>; accuracy <performance.accuracy>.
    ## Example            (example_code, fenced)

A question is the text between ``###Instruction:`` and ``###Output``; the right document is
the record whose ``api_call`` equals the question's. Documents are ranked by the first
appearance of any of their chunks among the top 50 chunks. Kestrel (written for this
project, unlike APIBench): a question is found at the first chunk holding its reference answer.

The scale test measures the search engine itself (FAISS, FTS5, SQLite row fetch) on random
unit vectors and synthetic text (each chunk after a document's first carries a 40-word
context, as contextual ingest gives), since embedding 100k real chunks takes hours on 2 cores;
the end-to-end figure embeds each query with MiniLM too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from apibench import question_of, render, say  # noqa: E402

from rag.config import init_workspace  # noqa: E402
from rag.index.store import ChunkRow, IndexStore, build_faiss, choose_kind, save_faiss  # noqa: E402
from rag.ingest.pipeline import ingest  # noqa: E402
from rag.retrieve import Retriever  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


#: retrieval settings compared on each index: (name, mode, fusion, dense_weight, aggregate)
SETTINGS: list[tuple[str, str, str, float, str]] = [
    ("dense", "dense", "rrf", 0.5, "chunk"),
    ("bm25", "bm25", "rrf", 0.5, "chunk"),
    ("hybrid", "hybrid", "rrf", 0.5, "chunk"),
    ("hybrid rrf w0.3", "hybrid", "rrf", 0.3, "chunk"),
    ("hybrid rrf w0.7", "hybrid", "rrf", 0.7, "chunk"),
    ("hybrid scores w0.3", "hybrid", "scores", 0.3, "chunk"),
    ("hybrid scores w0.5", "hybrid", "scores", 0.5, "chunk"),
    ("hybrid scores w0.7", "hybrid", "scores", 0.7, "chunk"),
    ("dense +doc", "dense", "rrf", 0.5, "document"),
    ("bm25 +doc", "bm25", "rrf", 0.5, "document"),
    ("hybrid +doc", "hybrid", "rrf", 0.5, "document"),
    ("hybrid scores w0.5 +doc", "hybrid", "scores", 0.5, "document"),
]


#: index variants: (name, contextual chunks, embedding.precision); 'plain' is the index as it was
#: before this change (no context, no identifier forms, fp32)
VARIANTS: list[tuple[str, bool, str]] = [("plain", False, "fp32"), ("contextual fp32", True, "fp32"),
                                         ("contextual", True, "auto")]


@contextlib.contextmanager
def recipe(contextual: bool) -> Iterator[None]:
    """``contextual=False``: the index as it was before contextual chunks (no document context
    embedded or indexed, no identifier forms in FTS5 or in queries), for the side-by-side."""
    import rag.index.store as store_mod
    import rag.ingest.batches as pipeline_mod

    saved = (pipeline_mod.add_context, store_mod.identifier_forms)
    if not contextual:
        pipeline_mod.add_context = lambda specs, *a, **k: list(specs)  # type: ignore[assignment]
        store_mod.identifier_forms = lambda text: []  # type: ignore[assignment]
    try:
        yield
    finally:
        pipeline_mod.add_context, store_mod.identifier_forms = saved


def configure(r: Retriever, mode_fusion: tuple[str, str, str, float, str]) -> str:
    _, mode, fusion, weight, aggregate = mode_fusion
    r.fusion, r.dense_weight, r.aggregate = fusion, weight, aggregate  # type: ignore[assignment]
    return mode


def apibench_workspace(data: Path, root: Path) -> tuple[Any, list[str], list[str]]:
    recs = [json.loads(ln) for ln in (data / "torchhub_api.jsonl").read_text().splitlines() if ln.strip()]
    evals = [json.loads(ln) for ln in (data / "torchhub_eval.json").read_text().splitlines() if ln.strip()]
    ws = init_workspace(root, corpus_name="apibench")
    doc_of_call: dict[str, str] = {}
    for i, rec in enumerate(recs):
        name = f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', rec['api_name'])[:40]}.md"
        (ws.root / "docs" / name).write_text(render(rec), encoding="utf-8")
        doc_of_call[rec["api_call"]] = f"docs/{name}"
    return ws, [question_of(e["code"]) for e in evals], [doc_of_call[e["api_call"]] for e in evals]


def kestrel_workspace(root: Path) -> tuple[Any, list[str], list[str]]:
    import shutil

    import yaml

    ws = init_workspace(root, corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(REPO / "examples" / "kestrel" / "docs", ws.root / "docs")
    items: list[dict[str, Any]] = []
    for name in ("kestrel.yaml", "kestrel-heldout.yaml"):
        data = yaml.safe_load((REPO / "domain_questions" / name).read_text())
        for cat in data["questions"]:
            items.extend(i for i in cat["items"] if isinstance(i, dict) and i.get("answer"))
    return ws, [i["question"] for i in items], [str(i["answer"]) for i in items]


CORPORA = ("apibench", "kestrel", "manpages")
MAN_DIR = Path("/usr/share/man/man1")
MAN_LINES = 300  # each page is cut after this many rendered lines (keeps the run in minutes)
MAN_DISTRACTORS_EVERY = 24  # every n-th other section-1 page joins as a distractor


def _render_man(page: str) -> str | None:
    """A section-1 manual page as markdown: '# name - summary', '## SECTION', body unindented."""
    import subprocess

    try:
        out = subprocess.run(["man", "-P", "cat", "1", page], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"}).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.splitlines()[1:MAN_LINES]  # the first line is the running header
    if not lines:
        return None
    md: list[str] = []
    for ln in lines:
        if ln and not ln[0].isspace() and ln.upper() == ln:  # NAME, SYNOPSIS, OPTIONS, ...
            md.append(f"\n## {ln.strip().title()}\n")
        else:
            md.append(ln.strip())
    body = "\n".join(md)
    m = re.search(r"## Name\n+(.+)", body)
    return f"# {m.group(1).strip() if m else page}\n{body}\n"


def manpages_workspace(root: Path) -> tuple[Any, list[str], list[str]] | None:
    """Debian's own section-1 manual pages (written by others): the pages the questions name
    plus every n-th other page as distractors. None when this machine has no man pages."""
    import shutil

    import yaml

    if not MAN_DIR.is_dir() or shutil.which("man") is None:
        return None
    spec = yaml.safe_load((REPO / "benchmarks" / "domains" / "manpages" / "questions.yaml").read_text())
    gold_pages = {q["page"] for q in spec["questions"]}
    others = sorted({re.sub(r"\.1.*$", "", f.name) for f in MAN_DIR.iterdir()
                     if not f.name.startswith("gcloud")} - gold_pages)  # thousands of near-identical gcloud pages
    pages = sorted(gold_pages) + others[MAN_DISTRACTORS_EVERY - 1::MAN_DISTRACTORS_EVERY]
    ws = init_workspace(root, corpus_name="manpages")
    rendered: set[str] = set()
    for page in pages:
        text = _render_man(page)
        if text:
            (ws.root / "docs" / f"{page}.md").write_text(text, encoding="utf-8")
            rendered.add(page)
    qs = [q for q in spec["questions"] if q["page"] in rendered]
    if len(qs) < len(spec["questions"]) // 2:
        return None
    return ws, [q["question"] for q in qs], [f"docs/{q['page']}.md" for q in qs]


def doc_ranks(results: list[list[Any]], gold: list[str]) -> list[int | None]:
    """APIBench: rank of the right document by the first appearance of any of its chunks."""
    ranks: list[int | None] = []
    for chunks, want in zip(results, gold, strict=True):
        docs = list(dict.fromkeys(c.source for c in chunks))
        ranks.append(docs.index(want) + 1 if want in docs else None)
    return ranks


def answer_ranks(results: list[list[Any]], answers: list[str]) -> list[int | None]:
    """Kestrel: rank of the first chunk that contains the reference answer."""
    ranks: list[int | None] = []
    for chunks, ans in zip(results, answers, strict=True):
        hit = next((n for n, c in enumerate(chunks, start=1) if ans.casefold() in c.text.casefold()), None)
        ranks.append(hit)
    return ranks


def summarize(ranks: list[int | None], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    out = {f"recall@{k}": round(sum(1 for x in ranks if x is not None and x <= k) / len(ranks), 4) for k in ks}
    out["mrr"] = round(sum(1 / x for x in ranks if x) / len(ranks), 4)
    return out


def recall_bench(data: Path, work: Path, only: tuple[str, ...] = CORPORA) -> dict[str, Any]:
    """The corpora, each ingested the old way and with contextual chunks, every setting."""
    out: dict[str, Any] = {}
    corpora: dict[str, Any] = {"apibench": lambda root: apibench_workspace(data, root),
                               "kestrel": kestrel_workspace, "manpages": manpages_workspace}
    for corpus, make in corpora.items():
        if corpus not in only:
            continue
        out[corpus] = {}
        for variant, contextual, precision in VARIANTS:
            if corpus == "manpages" and variant == "contextual fp32":
                continue  # the precision check is done on the other two; this corpus is the largest
            with recipe(contextual):
                made = make(work / f"{corpus}-{variant.replace(' ', '-')}")
                if made is None:
                    say(f"{corpus}: not on this machine (no man pages), skipped")
                    out.pop(corpus)
                    break
                ws, questions, gold = made
                ws.config.embedding.precision = precision
                t0 = time.perf_counter()
                report = ingest(ws)
                row: dict[str, Any] = {"documents": report.total_documents, "questions": len(questions),
                                       "chunks": report.total_chunks,
                                       "ingest_s": round(time.perf_counter() - t0, 2), "settings": {}}
                with Retriever.from_workspace(ws) as r:
                    r.embed(["warm up"])
                    for setting in SETTINGS:
                        mode = configure(r, setting)
                        t0 = time.perf_counter()
                        results = r.search_many(questions, k=50, mode=mode)
                        ms = (time.perf_counter() - t0) * 1000 / len(questions)
                        ranks = answer_ranks(results, gold) if corpus == "kestrel" else doc_ranks(results, gold)
                        row["settings"][setting[0]] = {**summarize(ranks), "batch_ms_per_query": round(ms, 2)}
                    if corpus == "apibench" and variant == "contextual":
                        lat = []
                        for q in questions[:50]:
                            t0 = time.perf_counter()
                            r.embed([q])
                            lat.append((time.perf_counter() - t0) * 1000)
                        out["query_embedding_ms_p50"] = round(statistics.median(lat), 2)
            out[corpus][variant] = row
            say(f"{corpus} {variant}: " + ", ".join(
                f"{name} {m['recall@5']:.3f}" for name, m in row["settings"].items()))
    return out


def ingest_throughput(data: Path, work: Path, rounds: int = 2) -> dict[str, Any]:
    """Chunks/s of a full APIBench ingest, the old recipe and the contextual one alternating
    (model already loaded), so machine load hits both alike."""
    times: dict[str, list[float]] = {v: [] for v, *_ in VARIANTS}
    chunks: dict[str, int] = {}
    for n in range(rounds):
        for variant, contextual, precision in VARIANTS:
            with recipe(contextual):
                ws, _, _ = apibench_workspace(data, work / f"tp-{variant.replace(' ', '-')}-{n}")
                ws.config.embedding.precision = precision
                t0 = time.perf_counter()
                report = ingest(ws)
                times[variant].append(time.perf_counter() - t0)
                chunks[variant] = report.total_chunks
    best = {v: min(ts) for v, ts in times.items()}
    out: dict[str, Any] = {v: {"chunks": chunks[v], "best_s": round(best[v], 2),
                               "chunks_per_s": round(chunks[v] / best[v], 1)} for v in times}
    out["ratio_contextual_vs_plain"] = round(out["contextual"]["chunks_per_s"] / out["plain"]["chunks_per_s"], 3)
    return out


def embed_throughput(n: int = 96) -> dict[str, Any]:
    """MiniLM chunks/s on 200-word chunks (the issue's baseline: 22.5 chunks/s)."""
    from rag.config import EmbeddingConfig
    from rag.index.embedder import load_embedder

    emb = load_embedder(EmbeddingConfig())
    rnd = random.Random(0)
    vocab = [w for w in re.findall(r"[a-z]+", Path(__file__).read_text().lower()) if len(w) > 2]
    texts = [" ".join(rnd.choice(vocab) for _ in range(200)) for _ in range(n)]
    emb.encode(texts[:8])
    t0 = time.perf_counter()
    emb.encode(texts)
    dt = time.perf_counter() - t0
    return {"chunks": n, "words_per_chunk": 200, "chunks_per_s": round(n / dt, 1), "batch_size": emb.batch_size}


def scale_bench(sizes: list[int], work: Path, dim: int = 384, queries: int = 100) -> dict[str, Any]:
    import numpy as np

    rnd = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(20000)]
    out: dict[str, Any] = {}
    for n in sizes:
        say(f"scale test at {n} chunks")
        d = work / f"scale-{n}"
        store = IndexStore(d)
        # clustered like real embeddings (topics), not uniform noise: 1 centre per 100 chunks
        # (two chunks of one topic: cosine ~0.5; of different topics: ~0)
        centres = rnd.standard_normal((max(1, n // 100), dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        vecs = centres[rnd.integers(0, len(centres), n)] + rnd.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        t0 = time.perf_counter()
        words = rnd.integers(0, len(vocab), size=(n, 60))
        leads = rnd.integers(0, len(vocab), size=(n // 20 + 1, 40))  # each document's lead: the context
        with store.transaction():
            store.insert_chunks(
                (ChunkRow(f"{i:064x}", f"doc{i // 20}.md", f"Doc {i // 20} > Part {i % 20}", 1, 5, None, 0, 1,
                          " ".join(vocab[j] for j in words[i]), 60, f"{i}",
                          "" if i % 20 == 0 else " ".join(vocab[j] for j in leads[i // 20])), vecs[i])
                for i in range(n))
            store.set_meta("generation", "1")
            store.set_meta("embedding_model", "default")
        insert_s = time.perf_counter() - t0
        row: dict[str, Any] = {"sqlite_insert_s": round(insert_s, 2)}
        for kind in ("flat", "hnsw"):
            t0 = time.perf_counter()
            ids, mat = store.all_vectors()
            index = build_faiss(ids, mat, kind, dim)
            build_s = time.perf_counter() - t0
            store.set_meta("faiss_kind", kind)
            save_faiss(d, index, {"generation": 1, "faiss_kind": kind})
            from rag.config import EmbeddingConfig

            r = Retriever(d, EmbeddingConfig())
            # a query lies near the chunk that answers it: a stored vector plus noise
            qv = mat[rnd.integers(0, n, queries)] + 0.5 * rnd.standard_normal((queries, dim)).astype(np.float32) / np.sqrt(dim)
            qv /= np.linalg.norm(qv, axis=1, keepdims=True)
            qtext = [" ".join(vocab[j] for j in rnd.integers(0, len(vocab), 8)) for _ in range(queries)]
            res: dict[str, Any] = {"build_s": round(build_s, 2)}
            for mode in ("dense", "bm25", "hybrid"):
                lat = []
                for i in range(queries):
                    t0 = time.perf_counter()
                    r._search_one(qtext[i], qv[i] if mode != "bm25" else None, 5, mode, False)
                    lat.append((time.perf_counter() - t0) * 1000)
                lat.sort()
                res[mode] = {"p50_ms": round(lat[len(lat) // 2], 2), "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2)}
            if kind == choose_kind("auto", n):  # what a user gets: embed the query with MiniLM too
                r.embed(["warm up"])
                lat = []
                for i in range(min(queries, 50)):
                    t0 = time.perf_counter()
                    r.search(f"how do I configure {qtext[i]}", k=5, mode="hybrid")
                    lat.append((time.perf_counter() - t0) * 1000)
                res["end_to_end_hybrid_p50_ms"] = round(statistics.median(lat), 2)
            if kind == "hnsw":  # recall of HNSW against exact search on the same vectors
                exact = build_faiss(ids, mat, "flat", dim)
                _, e_ids = exact.search(qv, 10)
                _, h_ids = index.search(qv, 10)
                res["recall@10_vs_flat"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(e_ids, h_ids, strict=True)])), 4)
            r.close()
            row[kind] = res
        store.close()
        row["peak_rss_mb"] = round(rss_mb(), 1)
        out[str(n)] = row
    return out


def baseline(rev: str, data: Path, sizes: list[int], work: Path) -> dict[str, Any]:
    """This benchmark as revision ``rev`` had it, run on its own code in a git worktree (same
    machine, same run), for the side-by-side figures."""
    import subprocess

    tree = work / "baseline-tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    try:
        out = work / "baseline.json"
        subprocess.run([sys.executable, str(tree / "benchmarks" / "retrieval.py"), "--data", str(data),
                        "--out", str(out), "--scale", ",".join(map(str, sizes))],
                       check=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
        result: dict[str, Any] = json.loads(out.read_text())
        return {"revision": rev, **result}
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def ratios(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"embedding_chunks_per_s_new_vs_old": round(
        new["embedding_throughput"]["chunks_per_s"] / old["embedding_throughput"]["chunks_per_s"], 3)}
    for n, row in new.get("scale", {}).items():
        base = old.get("scale", {}).get(n)
        if not base:
            continue
        for kind in ("flat", "hnsw"):
            for mode in ("dense", "bm25", "hybrid"):
                out[f"p50_{n}_{kind}_{mode}_new_vs_old"] = round(row[kind][mode]["p50_ms"] / base[kind][mode]["p50_ms"], 3)
        kind = choose_kind("auto", int(n))
        old_q = (old.get("recall") or {}).get("query_embedding_ms_p50")
        if old_q and "end_to_end_hybrid_p50_ms" in row[kind]:
            # the old script timed query embedding and search apart: their sum is its end to end
            out[f"end_to_end_{n}_new_ms"] = row[kind]["end_to_end_hybrid_p50_ms"]
            out[f"end_to_end_{n}_old_ms_sum"] = round(old_q + base[kind]["hybrid"]["p50_ms"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "apibench-torchhub")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "retrieval.json")
    ap.add_argument("--scale", default="10000,100000", help="Chunk counts for the latency test ('' = skip).")
    ap.add_argument("--only-scale", action="store_true", help="Skip the recall and ingest parts.")
    ap.add_argument("--baseline", metavar="REV", help="Also run this benchmark as git revision REV had it "
                    "(e.g. the last release) and report new/old ratios.")
    ap.add_argument("--corpora", default=",".join(CORPORA), help="Recall part: which corpora.")
    ap.add_argument("--recall-only", action="store_true",
                    help="Only the recall part, merged into --out's existing results (the other parts kept).")
    args = ap.parse_args()
    if args.recall_only:
        with tempfile.TemporaryDirectory(prefix="raftsmith-bench-") as tmp:
            merged: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
            got = recall_bench(args.data, Path(tmp), tuple(args.corpora.split(",")))
            merged.setdefault("recall", {}).update(got)
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
        for corpus, variants in got.items():
            for variant, row in (variants.items() if isinstance(variants, dict) else []):
                say(f"{corpus} ({variant}): {row['documents']} docs, {row['questions']} questions, {row['chunks']} chunks, "
                    + ", ".join(f"{name} R@5 {m['recall@5']:.3f}" for name, m in row["settings"].items()))
        return
    with tempfile.TemporaryDirectory(prefix="raftsmith-bench-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"benchmark": "apibench-torchhub + kestrel",
                                  "embedding_model": "all-MiniLM-L6-v2 (packaged)"}
        if not args.only_scale:
            say("recall benchmark (APIBench 94 API documents, Kestrel sample; plain and contextual ingest)")
            result["recall"] = recall_bench(args.data, work)
            say("ingest throughput, plain vs contextual, alternating")
            result["ingest_throughput"] = ingest_throughput(args.data, work)
        say("embedding throughput")
        result["embedding_throughput"] = embed_throughput()
        sizes = [int(s) for s in args.scale.split(",") if s.strip()]
        if sizes:
            result["scale"] = scale_bench(sizes, work)
        result["peak_rss_mb"] = round(rss_mb(), 1)
        if args.baseline:
            say(f"the same benchmark at {args.baseline}")
            old = baseline(args.baseline, args.data, sizes, work)
            result["baseline"] = {"revision": old["revision"], "recall": old.get("recall"),
                                  "embedding_throughput": old.get("embedding_throughput"), "scale": old.get("scale")}
            result["ratios_vs_baseline"] = ratios(result, old)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for corpus, variants in result.get("recall", {}).items():
        if not isinstance(variants, dict):
            continue
        for variant, row in variants.items():
            print(f"{corpus} ({variant}): {row['documents']} docs, {row['questions']} questions, {row['chunks']} chunks")
            print(f"  {'setting':26} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6}")
            for name, m in row["settings"].items():
                print(f"  {name:26} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['recall@10']:6.3f} {m['mrr']:6.3f}")
    print("ingest:", json.dumps(result.get("ingest_throughput")))
    print("embedding:", result["embedding_throughput"])
    for n, row in result.get("scale", {}).items():
        print(f"{n} chunks:", json.dumps(row))
    if "ratios_vs_baseline" in result:
        print("new / old:", json.dumps(result["ratios_vs_baseline"]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
