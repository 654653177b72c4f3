"""Workspace configuration: ``raftsmith.yaml``, typed and validated once at load.

Every section is a pydantic model whose fields carry their help text. Unknown keys are
tolerated with a warning (a newer config on an older install still loads); wrong types
or values raise :class:`ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rag.errors import ConfigError
from rag.fsutil import atomic_write
from rag.providers import StructuredChoice, TeacherChoice

log = logging.getLogger(__name__)

CONFIG_NAME = "raftsmith.yaml"
STATE_DIR = ".raftsmith"


class Section(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class CrawlConfig(Section):
    max_depth: int = Field(2, ge=0, description="Link depth followed from an llms.txt page.")
    max_files: int = Field(200, ge=1, description="Most pages fetched in one crawl.")
    delay_s: float = Field(0.2, ge=0, description="Pause between requests to one host.")
    timeout_s: float = Field(20.0, gt=0, description="Timeout for connecting and for each read.")
    page_deadline_s: float = Field(60.0, gt=0, description="Total time one page may take, headers and body; "
                                   "a slower page is cut off and reported.")
    max_page_mb: float = Field(10.0, gt=0, description="Largest page body accepted, both as sent and after "
                               "gzip/deflate decoding; a bigger page is cut off, reported and not cached.")
    skip_infixes: list[str] = Field(default_factory=list, description="Skip URLs containing any of these.")
    drop_query: bool = Field(True, description="Drop ?query strings from crawled URLs.")


class CorpusConfig(Section):
    name: str = Field("corpus", description="Name used for training data and exports.")
    paths: list[str] = Field(default_factory=lambda: ["docs"], description="Folders, files or URLs to ingest (relative to the workspace).")
    max_file_mb: float = Field(20.0, gt=0, description="Files larger than this are skipped.")
    max_text_ratio: float = Field(
        1.0, gt=0, le=100,
        description="Most text one file may yield, in millions of characters per max_file_mb (1.0 with max_file_mb 20: "
                    "20 million). A file that expands past it (a PDF decompression bomb) is skipped with the reason; "
                    "PDF extraction stops as soon as it is reached, and a PDF's pages may decode to at most 4 times "
                    "as many bytes of drawing instructions.")
    max_pdf_page_mb: float = Field(
        2.0, gt=0,
        description="Most decoded drawing instructions one PDF page may hold (MB). Text pages hold kilobytes; a "
                    "page past this (a decompression bomb, a huge vector drawing) skips the file before pypdf parses it.")
    chunk_tokens: int = Field(256, ge=32, le=8192, description="Token budget per chunk (embedding tokenizer).")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared between neighbouring chunks of one section.")
    parse_workers: int = Field(
        0, ge=0, le=64, description="Processes that read, parse and chunk files ahead of the embedder (0: in the "
        "ingest process, between embedding batches). They load the embedder's tokenizer only.")
    commit_every: int = Field(
        2048, ge=1, description="Chunks per committed batch while ingesting: memory stays bounded by one batch, "
        "and an ingest that is stopped (killed, out of power) keeps every committed batch; run 'raftsmith ingest' "
        "again to go on from there. A corpus below this is one transaction.")
    redact: bool = Field(
        False, description="Mask secrets found in documents (API key shapes, keys held in this machine's "
                           "environment or keyring) in the stored chunk text. Off: ingest only warns, naming the "
                           "file and the kind of secret, and 'bundle create' refuses such an index.")
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)


EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]
#: embedding.backend: what runs the embedding model (rag.index.embedder.load_embedder builds each)
EMBEDDING_BACKENDS: tuple[str, ...] = get_args(EmbeddingBackend)


class EmbeddingConfig(Section):
    model: str = Field("default", description="'default' = packaged all-MiniLM-L6-v2; or a local folder or hub id.")
    batch_size: int = Field(32, ge=1)
    device: str = Field("cpu", description="'cpu', 'cuda', 'mps' or 'auto'.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto' = bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX; ~1.4x faster "
        "here, cosine to fp32 >= 0.9999), else fp32 (GPUs included). 'fp32' always full precision; 'fp16' "
        "(CUDA only) loads the weights in half precision; 'bf16' (CPU only) forces the autocast. Torch backend only.")
    batch_tokens: int = Field(
        0, ge=0, description="> 0: cut encoding batches by padded tokens (rows x the longest row, texts sorted "
        "by length) instead of batch_size rows: wide batches of short texts, narrow ones of long texts. "
        "0 = batch_size rows per batch. Torch backend only.")
    backend: EmbeddingBackend = Field(
        "torch", description="'torch' = sentence-transformers on PyTorch (CPU, CUDA, MPS); 'onnx' = the same model "
        "exported once to ONNX and run by onnxruntime on the CPU (vectors equal to torch's, cosine >= 0.9999); "
        "'onnx-int8' = that export with int8 dynamic quantization (faster, cosine to torch ~0.99; switching to or "
        "from it re-embeds the index). The onnx backends need the 'onnx' extra.")


class IndexConfig(Section):
    path: str = Field(f"{STATE_DIR}/index", description="Folder holding the FAISS index and SQLite store.")
    kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = Field(
        "auto", description="FAISS index type; auto = flat up to 50k chunks, HNSW up to 3M while its float16 vectors "
        "fit index.memory_budget_mb, above that IVF-PQ (48-byte codes per chunk, trained on a sample, its top "
        "candidates rescored with the exact vectors from SQLite).")
    memory_budget_mb: float = Field(
        4000, gt=0, description="Query-side RAM the FAISS index may take (index.kind auto): an HNSW index that "
        "would pass it becomes IVF-PQ. 'raftsmith index stats' reports what an index takes.")
    recall_target: float = Field(
        0.95, gt=0, le=1, description="HNSW efSearch / IVF nprobe are set at build time to the smallest value whose "
        "recall@10 against exact search reaches this on held-out queries (recorded in meta.json).")


class TeacherConfig(Section):
    provider: TeacherChoice = Field(
        "none", description="Who writes the answers; 'none' uses the reference answers in the question files."
    )
    model: str = Field("anthropic/claude-sonnet-4.5", description="Teacher model name at the provider.")
    base_url: str | None = Field(None, description="For openai-compatible/ollama teachers, e.g. http://127.0.0.1:8000/v1.")
    key_name: str | None = Field(None, description="Keyring user name for the API key (default: the provider).")
    concurrency: int = Field(8, ge=1, le=256)
    max_cost_usd: float = Field(5.0, ge=0, description="Stop cleanly once the estimated spend reaches this.")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    temperature: float = Field(0.2, ge=0, le=2)
    redact: bool = Field(False, description="Redact emails, phones, IPs, card numbers, keys before sending.")
    deny_list: list[str] = Field(default_factory=list, description="Extra terms always redacted.")
    local_only: bool = Field(False, description="Refuse any teacher that is not on loopback.")
    price_in_per_mtok: float = Field(3.0, ge=0, description="USD per million prompt tokens, for cost estimates.")
    price_out_per_mtok: float = Field(15.0, ge=0, description="USD per million completion tokens.")
    max_tokens: int = Field(600, ge=16, le=32768, description="Most tokens the teacher may write per answer.")
    structured: StructuredChoice = Field(
        "auto", description="Structured-output style; auto = the provider's (llama.cpp servers: json_object)."
    )


class RaftConfig(Section):
    p_oracle: float = Field(0.8, ge=0, le=1, description="Probability that the oracle chunk is in the context.")
    no_oracle: Literal["answer", "refuse"] = Field(
        "answer", description="Rows whose context lacks the oracle (1 - p_oracle): 'answer' as RAFT does "
                              "(the model learns the domain by heart), or 'refuse' (it learns to say the "
                              "documents do not hold the answer; no teacher call).")
    n_distractors: int = Field(4, ge=0, le=32)
    cot: bool = Field(True, description="Chain-of-thought answers quoting the context.")
    quote_begin: str = "##begin_quote##"
    quote_end: str = "##end_quote##"
    synthesize_per_chunk: int = Field(0, ge=0, description="With a teacher: for every chunk, its atomic facts are "
                                      "listed and this many questions written per fact (0 = only question files).")
    synthesize_max_facts: int = Field(12, ge=1, le=64, description="At most this many facts asked for per chunk.")
    questions: list[str] = Field(default_factory=lambda: ["domain_questions"], description="Question YAML files or folders.")
    eval_fraction: float = Field(0.2, ge=0, lt=1, description="Share of facts with several phrasings that give one to "
                                 "eval (eval_split: phrasings), or of items held out (facts).")
    eval_split: Literal["phrasings", "facts", "none"] = Field(
        "phrasings", description="What the eval split holds out. 'phrasings': extra phrasings of facts that are "
                                 "still trained on (closed-book knowledge in new words; no fact is withheld). "
                                 "'facts': whole chunks and their questions (reading unseen facts with RAG). "
                                 "'none': everything is trained on.")
    paraphrases: int = Field(
        3, ge=0, le=20, description="With a teacher: other phrasings of each question item it writes (structured "
                                    "output, cached, deduplicated); each is trained on like a paraphrases: entry. "
                                    "0 switches it off.")
    reversals: bool = Field(
        True, description="With a teacher: also up to two reversed questions per item (attribute -> entity, 'what "
                          "listens on port 7431?') where the fact allows, each trained on as a fact of its own.")
    rag_rows: Literal["every_phrasing", "first_phrasing"] = Field(
        "every_phrasing", description="Which phrasings of a fact get a RAFT row (documents shown): every one, or "
                                      "only the item's own question (paraphrases then get closed-book rows only: "
                                      "a CPU-speed setting, RAFT rows are the long ones).")
    closed_book: float = Field(
        1.0, ge=0, le=1, description="Share of training phrasings that also get a closed-book row: the question "
                                     "with no documents, answered with the fact, so the model knows it without "
                                     "retrieval. 0 switches them off.")
    refusal_rows: bool = Field(
        True,
        description="Question-file items marked unanswerable (answer: null) become training rows whose reply "
                    "says the documents do not hold the answer, over the chunks retrieval brings for them.",
    )
    dedup_threshold: float = Field(0.95, gt=0, le=1, description="Cosine above which two questions are near-duplicates.")
    seed: int = 0


class LoraConfig(Section):
    r: int | None = Field(None, ge=1, description="LoRA rank (default: the family's).")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha (default: the family's).")
    dropout: float = Field(0.0, ge=0, lt=1)
    rslora: bool | None = Field(None, description="Rank-stabilized LoRA scaling (default: the family's).")
    target_modules: list[str] | None = Field(None, description="Default: the family's registry entry.")
    top_layers: int | None = Field(
        None, ge=1,
        description="Adapt only the top N transformer layers (default: all). The backward pass then stops "
                    "at layer N from the top: about 1.5x faster LoRA steps on a CPU with half of SmolLM2's layers, "
                    "at some cost in how much the adapter can learn.",
    )


class StudentConfig(Section):
    family: str = Field("smollm2", description="Model family from the registry in builder/families.py (the README lists them).")
    base: str | None = Field(None, description="Base model path or HF id (default: the family's).")
    backend: TrainerName = "auto"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lr: float | None = Field(None, gt=0, description="Learning rate (default: the family's).")
    epochs: float | None = Field(None, gt=0, description="Training epochs (default: the family's).")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_seq_len: int = Field(1024, ge=64)
    packing: bool = False
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Training precision. auto: bf16 on CUDA where supported (else fp16), bf16 autocast on "
                            "a CPU with native bf16 (AVX512-BF16/AMX), else fp32.")
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="Base weights while training on CUDA (the hf backend): 'nf4' = bitsandbytes 4-bit "
        "QLoRA (least GPU memory); 'none' = LoRA over bf16/fp16 weights (faster where the model fits); 'auto' "
        "= nf4 when bitsandbytes imports, else none with a warning. On a CPU the weights are fp32 either way.")
    replay: int = Field(
        64, ge=0, le=64, description="General prompts the base model answers itself before training; its answers "
                                     "are trained on beside the domain rows so the model keeps its general "
                                     "behaviour (self-distillation replay). 0 switches it off.")
    select_epoch: Literal["closed_book", "last"] = Field(
        "closed_book", description="Which epoch's adapter to keep: 'closed_book' scores each epoch on the eval "
                                   "split's held-out phrasings with no documents and keeps the best (a tie goes "
                                   "to the lower NLL of the reference answers); 'last' keeps the final one.")
    select_patience: int | None = Field(
        None, ge=1, description="With select_epoch: closed_book, stop after this many epochs without a better score "
                                "(default: run every epoch).")
    select_max_questions: int = Field(64, ge=1, description="At most this many eval phrasings are scored per epoch.")
    adapter_scale: float = Field(
        1.0, gt=0, le=1,
        description="Strength of the trained LoRA update, baked into the saved adapter: below 1.0 the model "
                    "sits that fraction of the way from base to tuned (WiSE-FT-style), which forgets less. "
                    "On the ferrow benchmark 0.75 kept closed-book accuracy and raised retention 0.63 -> 0.71; "
                    "0.5 cost closed-book accuracy.")
    reuse_frozen_layers: bool = Field(
        True, description="With lora.top_layers on a CPU: keep the frozen bottom layers' output per training row "
                          "from the first epoch and skip those layers in later epochs (the same loss and "
                          "gradients, fewer FLOPs). Uses up to 2 GB of RAM; false recomputes every epoch.")
    output_dir: str = Field(f"{STATE_DIR}/runs", description="Where checkpoints and adapters go.")


class ExportConfig(Section):
    quantizations: list[str] = Field(default_factory=lambda: ["q4_k_m"], description="q4_k_m, q5_k_m, q8_0, f16.")
    adapter: bool = Field(True, description="Also write the LoRA adapter as GGUF.")
    out_dir: str = "gguf"
    name: str | None = Field(None, description="Export name (default: corpus name + family).")


class RetrieverTrainConfig(Section):
    """``raftsmith train-retriever``: fine-tuning the embedder on the RAFT rows' question/oracle pairs."""

    epochs: float = Field(3.0, gt=0, description="Passes over the (question, oracle chunk) pairs.")
    batch_size: int = Field(32, ge=2, description="Pairs per step; the other pairs in a batch are the easy negatives.")
    lr: float = Field(5e-5, gt=0, description="Learning rate (AdamW, linear warm-up over 10% of the steps).")
    hard_negatives: int = Field(1, ge=0, le=8, description="RAFT distractor chunks per pair used as hard negatives.")
    max_seq_length: int | None = Field(None, ge=16, description="Tokens per text while training (default: the model's).")
    out_dir: str = Field(f"{STATE_DIR}/embedders", description="Where tuned embedders are written (relative to the workspace).")
    seed: int = 0


class OllamaConfig(Section):
    host: str | None = Field(None, description="Default: $OLLAMA_HOST or http://127.0.0.1:11434.")
    base_model_name: str | None = Field(None, description="Name of the base model already in Ollama.")
    tuned_model_name: str | None = Field(None, description="Name raftsmith registers the tuned model as.")


BackendName = Literal["llama-cpp", "ollama", "openai"]
#: the chat backends (rag.llm.factory builds each); --backend offers these
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
TrainerName = Literal["auto", "unsloth", "hf"]
#: student.backend / train --backend
TRAINER_NAMES: tuple[str, ...] = get_args(TrainerName)
RerankName = Literal["off", "cross-encoder", "llm"]
#: chat.rerank: the rerank stages (rag.rerank builds each); eval --rerank offers these
RERANK_NAMES: tuple[str, ...] = get_args(RerankName)


class ChatConfig(Section):
    backend: BackendName = "llama-cpp"
    model: str = Field("tuned", description="'base', 'tuned' or a model name/path.")
    top_k: int = Field(5, ge=1, le=100)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "scores"] = Field(
        "rrf", description="How hybrid mode merges dense and BM25: 'rrf' (reciprocal ranks) or 'scores' "
        "(each ranker's scores min-max normalised per query, then weighted).")
    dense_weight: float = Field(0.5, ge=0, le=1, description="Weight of the dense ranker in hybrid fusion "
                                "(BM25 gets 1 - this); 0.5 = equal.")
    aggregate: Literal["chunk", "document"] = Field(
        "chunk", description="'document': several hits of one document lift it (for corpora where a "
        "document is the unit of answer); results come grouped by document.")
    min_score: float = Field(0.25, description="Dense cosine below which a chunk counts as irrelevant.")
    bm25_budget: int = Field(
        10_000, ge=0, description="On an index of over 100k chunks, the most chunks one BM25 query scores: its "
        "commonest terms are left out first, its rarest always kept. 0 = every term, always (slow at millions).")
    num_ctx: int = Field(4096, ge=512)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    base_url: str | None = Field(None, description="For the openai backend.")
    base_gguf: str | None = Field(None, description="Base GGUF for llama-cpp (default: the family's packaged/base GGUF).")
    offline: bool = Field(False, description="ask/chat/serve refuse every non-loopback network connection (socket guard).")
    rerank: RerankName = Field(
        "off", description="Reorder the first-stage candidates before the top_k are kept: 'cross-encoder' (a "
                           "sentence-transformers CrossEncoder, chat.rerank_model), 'llm' (the local llama.cpp model "
                           "judges each passage from its Yes/No logprobs) or 'off'.")
    rerank_model: str | None = Field(
        None, description="cross-encoder: a local folder or a hub id already in the Hugging Face cache (required). "
                          "llm: 'base', 'tuned', an export name or a .gguf path (default: 'base').")
    rerank_depth: int = Field(20, ge=1, le=200, description="Candidates the reranker reads per question (at least top_k).")


class AuditConfig(Section):
    path: str = f"{STATE_DIR}/audit.jsonl"
    hmac_key_name: str | None = Field(None, description="Keyring name of an HMAC key; off when unset.")
    log_text: bool = Field(True, description="False = log sha256 of query and answer instead of text.")
    anchor: Literal["auto", "keyring", "off"] = Field(
        "auto", description="Keep the log's last seq and hash in the OS keyring too, so an older copy of the log and "
        "its head put back is caught. auto = when a keyring answers here; keyring = refuse to answer without one; off.")
    anchor_every: int = Field(1, ge=1, description="Write the keyring anchor every N appends (1 = every append; "
                              "larger is cheaper but lets the last N-1 records go unanchored).")


class ServeConfig(Section):
    """``raftsmith serve``: limits on what one request may ask for, and who may ask."""

    max_tokens: int = Field(512, ge=1, description="Tokens an answer may use when the request sets no max_tokens.")
    max_tokens_limit: int = Field(2048, ge=1, description="Hard cap: a larger max_tokens in a request is clamped to this.")
    max_messages: int = Field(64, ge=1, description="Most messages (turns) one request may carry; more is a 400.")
    max_history_chars: int = Field(32000, ge=100, description="Most characters all messages together may hold; more is a 400.")
    max_body_kb: int = Field(256, ge=1, description="Largest request body in KiB; a larger one is refused with 413.")
    max_running: int = Field(1, ge=1, description="Generations running at once (each holds its model while it runs).")
    max_waiting: int = Field(4, ge=0, description="Requests that may wait for a running slot; beyond that, 503 at once.")
    wait_s: float = Field(120.0, gt=0, description="How long a waiting request waits for a slot before a 503.")
    max_generation_s: float = Field(300.0, gt=0, description="Wall-clock cap on one generation; it is stopped after this.")
    backlog: int = Field(128, ge=1, description="Listen backlog (connections the OS queues before accept).")
    max_connections: int = Field(64, ge=1, description="Open connections uvicorn serves at once; beyond that, 503.")
    require_token: bool = Field(False, description="Require the bearer token on loopback too (always required off loopback).")
    allowed_hosts: list[str] = Field(default_factory=list, description="Extra Host header names accepted (besides loopback and the bound host), e.g. a LAN name used with --allow-remote.")


class RaftsmithConfig(Section):
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    raft: RaftConfig = Field(default_factory=RaftConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    retriever: RetrieverTrainConfig = Field(default_factory=RetrieverTrainConfig)
    ollama: OllamaConfig = Field(default_factory=OllamaConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("corpus")
    @classmethod
    def _name_is_filename_safe(cls, v: CorpusConfig) -> CorpusConfig:
        if not v.name or any(c in v.name for c in "/\\ \t"):
            raise ValueError("corpus.name must be a non-empty name without slashes or spaces")
        return v


class Workspace:
    """A loaded config plus the folder it lives in; resolves every relative path."""

    def __init__(self, root: Path, config: RaftsmithConfig, config_path: Path | None = None):
        self.root = root.resolve()
        self.config = config
        self.config_path = config_path

    def path(self, rel: str | os.PathLike[str]) -> Path:
        p = Path(os.path.expanduser(str(rel)))
        return p if p.is_absolute() else self.root / p

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def index_dir(self) -> Path:
        return self.path(self.config.index.path)

    @property
    def audit_path(self) -> Path:
        return self.path(self.config.audit.path)

    @property
    def training_dir(self) -> Path:
        return self.root / "training_data"

    @property
    def export_dir(self) -> Path:
        return self.path(self.config.export.out_dir)


def _warn_unknown(model: BaseModel, prefix: str = "") -> None:
    extra = model.model_extra or {}
    for key in extra:
        log.warning("raftsmith.yaml: unknown key '%s%s' ignored (check the spelling)", prefix, key)
    for name in type(model).model_fields:
        child = getattr(model, name)
        if isinstance(child, BaseModel):
            _warn_unknown(child, f"{prefix}{name}.")


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    lines.append("Fix these keys in the file, or run 'raftsmith init' to write a fresh default config.")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = CONFIG_NAME) -> RaftsmithConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of sections (corpus:, embedding:, ...), not {type(data).__name__}")
    try:
        cfg = RaftsmithConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, source)) from None
    _warn_unknown(cfg)
    return cfg


def find_config(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for d in [here, *here.parents]:
        candidate = d / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def load_workspace(config_path: str | os.PathLike[str] | None = None) -> Workspace:
    """Load the workspace from ``config_path``, $RAFTSMITH_CONFIG, or the nearest raftsmith.yaml upward."""
    if config_path is None:
        config_path = os.environ.get("RAFTSMITH_CONFIG") or None
    if config_path is None:
        found = find_config()
        if found is None:
            raise ConfigError(
                f"No {CONFIG_NAME} found here or in any parent folder. "
                "Run 'raftsmith init DIR' to create a workspace, or pass --config PATH."
            )
        config_path = found
    path = Path(config_path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Run 'raftsmith init {path.parent}' or fix --config.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}. Fix the syntax at the position shown.") from None
    return Workspace(path.parent, parse_config(data, str(path)), path)


def dump_config(cfg: RaftsmithConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=True, allow_unicode=True)


def default_config_text(corpus_name: str = "corpus") -> str:
    cfg = RaftsmithConfig()
    cfg.corpus.name = corpus_name
    header = (
        "# raftsmith workspace configuration. Every key is optional; see README.md.\n"
        "# Paths are relative to this file's folder.\n"
    )
    return header + dump_config(cfg)


def init_workspace(directory: str | os.PathLike[str], corpus_name: str = "corpus", force: bool = False) -> Workspace:
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / CONFIG_NAME
    if cfg_path.exists() and not force:
        raise ConfigError(f"{cfg_path} already exists; pass --force to overwrite it.")
    for sub in ("docs", "domain_questions", "training_data", "gguf", "modelfiles", STATE_DIR):
        (root / sub).mkdir(exist_ok=True)
    atomic_write(cfg_path, default_config_text(corpus_name))
    return load_workspace(cfg_path)
