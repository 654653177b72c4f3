"""``raftsmith register``: exports into Ollama through the official client, and their names.

Merged mode creates ``<export>`` FROM the merged GGUF; adapter mode creates it from the base
model already in Ollama plus the LoRA adapter GGUF. When the export carries the base model as
GGUF and no ``ollama.base_model_name`` is configured, ``<export>-base`` is registered too, so
``--model base|tuned`` works against Ollama with no names to type.

Blobs are uploaded with ``create_blob`` (skipped when ``HEAD /api/blobs/<digest>`` says the
server has them); models are created with ``create(model=, from_=, files=, adapters=,
template=, system=, parameters=)``. Template, system prompt and parameters come from the
export's Modelfile. Registration is idempotent by digest: a model whose recorded request
fingerprint (or whose ``/api/show`` Modelfile) matches is left alone. What raftsmith
registered is tracked in ``.raftsmith/ollama_registered.json``; only those can be removed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.config import Workspace
from rag.errors import BackendError, ConfigError
from rag.exports import Export, find_export, newest_export
from rag.fsutil import atomic_write, file_digest
from rag.llm.ollama_backend import call, make_client, resolve_host, unavailable

STATE_FILE = "ollama_registered.json"
_INT_PARAMS = {"num_ctx", "num_predict", "top_k", "seed", "repeat_last_n", "num_keep", "num_gpu", "num_thread", "mirostat"}


def ollama_name(text: str) -> str:
    """A name Ollama accepts: lowercase letters, digits, '-', '_', '.'."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return s or "raftsmith"


def ollama_names(ws: Workspace, export: Export | None = None) -> tuple[str | None, str | None]:
    """(base, tuned) model names in Ollama: config first, else what register names the export."""
    cfg = ws.config.ollama
    export = export or newest_export(ws)
    base = cfg.base_model_name or (ollama_name(export.name) + "-base" if export and export.files("base") else None)
    tuned = cfg.tuned_model_name or (ollama_name(export.name) if export else None)
    return base, tuned


# --- Modelfile parsing ---------------------------------------------------------------------

def parse_modelfile(text: str) -> dict[str, Any]:
    """FROM / ADAPTER / TEMPLATE / SYSTEM / PARAMETER / LICENSE of a Modelfile (triple quotes allowed)."""
    out: dict[str, Any] = {"from": None, "adapters": [], "template": None, "system": None, "parameters": {}, "license": None}
    pos, n = 0, len(text)
    pattern = re.compile(r'[ \t]*([A-Za-z]+)[ \t]+("""(.*?)"""|[^\n]*)', re.DOTALL)
    while pos < n:
        if text[pos] == "\n":
            pos += 1
            continue
        line_end = text.find("\n", pos)
        line = text[pos: line_end if line_end >= 0 else n]
        if not line.strip() or line.lstrip().startswith("#"):
            pos = (line_end + 1) if line_end >= 0 else n
            continue
        m = pattern.match(text, pos)
        if m is None:
            raise ConfigError(f"Modelfile line {text.count(chr(10), 0, pos) + 1} is not 'INSTRUCTION value': {line!r}")
        word, value = m.group(1).upper(), m.group(3) if m.group(3) is not None else m.group(2).strip()
        pos = m.end()
        if word == "FROM":
            out["from"] = value
        elif word == "ADAPTER":
            out["adapters"].append(value)
        elif word in ("TEMPLATE", "SYSTEM", "LICENSE"):
            out[word.lower()] = _unquote(value) if m.group(3) is None else value
        elif word == "PARAMETER":
            key, _, raw = value.partition(" ")
            _add_param(out["parameters"], key.strip(), _unquote(raw.strip()))
        elif word == "MESSAGE":
            continue
        else:
            raise ConfigError(f"Unknown Modelfile instruction {word}; fix the Modelfile or rerun 'raftsmith export'.")
    return out


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] == '"':
        try:
            return str(shlex.split(v)[0])
        except ValueError:
            return v[1:-1]
    return v


def _add_param(params: dict[str, Any], key: str, raw: str) -> None:
    if key == "stop":
        params.setdefault("stop", []).append(raw)
        return
    value: Any = raw
    if key in _INT_PARAMS:
        value = int(raw)
    else:
        try:
            value = float(raw)
        except ValueError:
            value = {"true": True, "false": False}.get(raw.lower(), raw)
    params[key] = value


# --- state --------------------------------------------------------------------------------

def _state_path(ws: Workspace) -> Path:
    return ws.state_dir / STATE_FILE


def load_state(ws: Workspace) -> dict[str, dict[str, Any]]:
    p = _state_path(ws)
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{p} is damaged; delete it (Ollama itself is unaffected) and rerun 'raftsmith register'.") from None
    return data if isinstance(data, dict) else {}


def _save_state(ws: Workspace, state: dict[str, Any]) -> None:
    p = _state_path(ws)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, json.dumps(state, indent=2, sort_keys=True))


def _key(host: str, name: str) -> str:
    return f"{host}|{name}"


# --- registration ---------------------------------------------------------------------------

@dataclass
class RegisteredModel:
    name: str
    role: str  # tuned | base
    mode: str  # merged | adapter | gguf
    action: str  # created | replaced | unchanged
    request: dict[str, Any] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)


@dataclass
class RegisterReport:
    host: str
    export: str
    models: list[RegisteredModel]

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "export": self.export, "models": [asdict(m) for m in self.models]}


def _modelfile(export: Export, adapter: bool) -> dict[str, Any]:
    role = "modelfile-adapter" if adapter else "modelfile"
    entries = export.files(role)
    path = export.dir / (entries[0]["path"] if entries else ("Modelfile.adapter" if adapter else "Modelfile"))
    if path.is_file():
        return parse_modelfile(path.read_text(encoding="utf-8"))
    if adapter and (export.dir / "Modelfile").is_file():
        return parse_modelfile((export.dir / "Modelfile").read_text(encoding="utf-8"))
    return {"template": None, "system": export.manifest.get("system_prompt"), "license": None,
            "parameters": {"stop": export.stop} if export.stop else {}}


def _fingerprint(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


class _Registrar:
    def __init__(self, ws: Workspace, host: str | None, replace: bool):
        self.ws = ws
        self.host = resolve_host(host or ws.config.ollama.host)
        self.client = make_client(self.host, timeout=3600)
        self.replace = replace
        self.state = load_state(ws)
        self.present = self._tags()

    def _tags(self) -> set[str]:
        resp = call(self.host, self.client.list)
        names = set()
        for m in resp.models:
            if m.model:
                names.add(m.model)
                if m.model.endswith(":latest"):
                    names.add(m.model[: -len(":latest")])
        return names

    def ensure_blob(self, path: Path) -> tuple[str, bool]:
        """(digest, uploaded): upload unless the server already has the blob."""
        import httpx

        digest = file_digest(path)
        try:
            r = httpx.head(f"{self.host}/api/blobs/{digest}", timeout=30)
        except httpx.HTTPError:
            raise unavailable(self.host) from None
        if r.status_code == 200:
            return digest, False
        got = call(self.host, self.client.create_blob, path)
        if got != digest:
            raise BackendError(f"Ollama stored {path.name} as {got}, expected {digest}; the file changed during upload, retry.")
        return digest, True

    def _show_matches(self, name: str, digests: list[str], request: dict[str, Any]) -> bool:
        """True when Ollama's model already uses these blobs with the same template and system prompt."""
        try:
            shown = call(self.host, self.client.show, name)
        except BackendError:
            return False
        text = shown.modelfile or ""
        if not all(d.split(":", 1)[1] in text for d in digests):
            return False
        return all((getattr(shown, k) or "") == request[k] for k in ("template",) if k in request) and \
            ("system" not in request or request["system"] in text)

    def create(self, name: str, role: str, mode: str, request: dict[str, Any], uploaded: list[str],
               digests: list[str], export: Export) -> RegisteredModel:
        fp = _fingerprint(request)
        rec = self.state.get(_key(self.host, name))
        exists = name in self.present
        same = exists and bool(rec and rec.get("fingerprint") == fp)
        adopted = exists and not rec and self._show_matches(name, digests, request)
        if same or adopted:
            if adopted:  # registered earlier but the state file was lost: record it again
                self._remember(name, role, mode, fp, digests, export)
            return RegisteredModel(name, role, mode, "unchanged", request, uploaded)
        if exists and not self.replace:
            ours = "registered by raftsmith" if rec else "not registered by raftsmith"
            raise ConfigError(f"Ollama already has a model named '{name}' ({ours}) with different content; "
                              "pass --replace to overwrite it, or set ollama.tuned_model_name to another name.")
        call(self.host, self.client.create, model=name, stream=False, **request)
        self.present.add(name)
        self._remember(name, role, mode, fp, digests, export)
        return RegisteredModel(name, role, mode, "replaced" if exists else "created", request, uploaded)

    def _remember(self, name: str, role: str, mode: str, fp: str, digests: list[str], export: Export) -> None:
        self.state[_key(self.host, name)] = {
            "host": self.host, "name": name, "role": role, "mode": mode, "fingerprint": fp, "digests": digests,
            "export": export.name, "export_dir": str(export.dir),
            "registered_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _save_state(self.ws, self.state)


def _request(mf: dict[str, Any], **kw: Any) -> dict[str, Any]:
    req = {k: v for k, v in kw.items() if v}
    for k in ("template", "system", "license"):
        if mf.get(k):
            req[k] = mf[k]
    if mf.get("parameters"):
        req["parameters"] = mf["parameters"]
    return req


def register(ws: Workspace, host: str | None = None, adapter: bool = False, replace: bool = False,
             export_name: str | None = None) -> RegisterReport:
    """Register the newest (or the named) export's tuned model, and its base when it carries one."""
    export = find_export(ws, export_name) if export_name else newest_export(ws)
    if export is None:
        raise ConfigError(f"No export found in {ws.export_dir}: run 'raftsmith export' first" +
                          (f" (no export named '{export_name}')." if export_name else "."))
    reg = _Registrar(ws, host, replace)
    cfg = ws.config.ollama
    tuned_name = cfg.tuned_model_name or ollama_name(export.name)
    quants = ws.config.export.quantizations
    out: list[RegisteredModel] = []
    base_name = cfg.base_model_name
    base_file = export.file("base", quants)
    if not base_name and base_file is not None:
        base_name = ollama_name(export.name) + "-base"
        digest, up = reg.ensure_blob(base_file[0])
        mf = _modelfile(export, adapter=False)
        req = _request(mf, files={base_file[0].name: digest})
        out.append(reg.create(base_name, "base", "gguf", req, [digest] if up else [], [digest], export))
    if adapter:
        ad = export.file("adapter")
        if ad is None:
            raise ConfigError(f"Export {export.dir} has no adapter GGUF; rerun 'raftsmith export' with --adapter, or register without --adapter.")
        mf = _modelfile(export, adapter=True)
        from_mf = mf.get("from")
        if not base_name and from_mf and not str(from_mf).startswith((".", "/")) and not str(from_mf).endswith(".gguf"):
            base_name = str(from_mf)  # the export's Modelfile.adapter names the base model in Ollama
        if not base_name:
            raise ConfigError("Adapter mode needs the base model in Ollama: set ollama.base_model_name (e.g. smollm2:135m, "
                              "pulled with 'ollama pull') or export with the base GGUF.")
        if base_name not in reg.present:
            raise ConfigError(f"The base model '{base_name}' is not in Ollama at {reg.host}; run 'ollama pull {base_name}' first.")
        digest, up = reg.ensure_blob(ad[0])
        req = _request(mf, from_=base_name, adapters={ad[0].name: digest})
        out.append(reg.create(tuned_name, "tuned", "adapter", req, [digest] if up else [], [digest], export))
    else:
        merged = export.file("merged", quants)
        if merged is None:
            raise ConfigError(f"Export {export.dir} has no merged GGUF; rerun 'raftsmith export', or use --adapter.")
        digest, up = reg.ensure_blob(merged[0])
        mf = _modelfile(export, adapter=False)
        req = _request(mf, files={merged[0].name: digest})
        out.append(reg.create(tuned_name, "tuned", "merged", req, [digest] if up else [], [digest], export))
    from rag.audit import audit_event

    for m in out:
        blobs = list((m.request.get("files") or m.request.get("adapters") or {}).values())
        audit_event(ws, "register", outcome=m.action, model={"name": m.name, "digest": blobs[0] if blobs else None},
                    host=reg.host, mode=m.mode, export=export.name, base=m.request.get("from_"))
    return RegisterReport(reg.host, export.name, out)


def list_registered(ws: Workspace, host: str | None = None) -> list[dict[str, Any]]:
    """What raftsmith registered at this host, each with ``present`` (still in Ollama)."""
    h = resolve_host(host or ws.config.ollama.host)
    client = make_client(h, timeout=30)
    present = {m.model for m in call(h, client.list).models if m.model}
    present |= {p[: -len(":latest")] for p in present if p.endswith(":latest")}
    rows = []
    for rec in load_state(ws).values():
        if rec.get("host") == h:
            rows.append({**rec, "present": rec["name"] in present})
    return sorted(rows, key=lambda r: r["name"])


def remove(ws: Workspace, name: str, host: str | None = None) -> None:
    """Delete a model raftsmith registered (refuses names it did not register)."""
    h = resolve_host(host or ws.config.ollama.host)
    state = load_state(ws)
    if _key(h, name) not in state:
        raise ConfigError(f"'{name}' was not registered by raftsmith at {h}; remove other models with 'ollama rm {name}'.")
    client = make_client(h, timeout=60)
    try:
        call(h, client.delete, name)
    except BackendError as err:
        if "404" not in str(err):
            raise
    del state[_key(h, name)]
    _save_state(ws, state)
    from rag.audit import audit_event

    audit_event(ws, "unregister", outcome="removed", model={"name": name, "digest": None}, host=h)
