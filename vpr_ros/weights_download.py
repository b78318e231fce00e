"""The released weight files, fetched by name into the cache (a command, never at node run time).

Each entry names where its publisher releases it (the D²-VPR and CricaVPR READMEs' Google Drive
links, DINOv2's direct downloads, Hugging Face model files) and the model configuration that
reads it. Integrity: a Hugging Face file is checked against the sha256 of its Git LFS pointer
(``/raw/main/<file>``: ``oid sha256:...``), the publisher's own hash; the others publish none, so
the hash of the first complete download is recorded beside the file and every later use is
checked against it (the output says which). Downloads resume (HTTP Range) from a ``.part`` file;
Google Drive's "cannot scan this file for viruses" page is answered by submitting its form. Only
the standard library (urllib) is used.
"""
from __future__ import annotations

import hashlib
import html.parser
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vpr_ros.errors import CheckpointError
from vpr_ros.files import replaced_atomically

DRIVE = "https://drive.google.com/uc?export=download&id={id}"
FAIR = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}{reg}_pretrain.pth"
HF = "https://huggingface.co/{repo}/resolve/main/model.safetensors"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Release:
    """One released file: ``url`` (a Drive ``uc`` link, a direct or a Hugging Face URL), the file
    name to store, the model configuration that reads it, and where its hash comes from."""

    name: str
    url: str
    filename: str
    model_config: str
    about: str
    hf_pointer: str = ""  # Hugging Face: the LFS pointer URL giving the publisher's sha256

    @property
    def drive(self) -> bool:
        return "drive.google.com" in self.url or "/uc?" in self.url


def _hf(name: str, repo: str, about: str) -> Release:
    return Release(name, HF.format(repo=repo), f"{repo.split('/')[-1]}.safetensors", "", about,
                   hf_pointer=f"https://huggingface.co/{repo}/raw/main/model.safetensors")


RELEASES = {r.name: r for r in [
    Release("d2vpr", DRIVE.format(id="1uh4XZsmRBhPkGuBNTWtjNypoGBd2JWyy"), "d2vpr.pth", "models/d2vpr_official.yaml",
            "D²-VPR, no cross-image encoder (the D²-VPR README's first table)"),
    Release("d2vpr_encoder_distill", DRIVE.format(id="1tcsn-U-v-jfRHr9-BIyIyCfezdse_iy_"), "d2vpr_encoder_distill.pth",
            "models/d2vpr_official_encoder.yaml", "D²-VPR distillation model, cross-image encoder (evaluation only)"),
    Release("d2vpr_encoder_finetune", DRIVE.format(id="1FwJY2hhuMLh4OJFTr7cMzRM7WrZ2Qb9a"),
            "d2vpr_encoder_finetune.pth", "models/d2vpr_official_encoder.yaml",
            "D²-VPR fine-tuned model, cross-image encoder (evaluation only)"),
    Release("cricavpr", DRIVE.format(id="171lCcxZFFnvEvo88ntIwELeBegcMTEJs"), "cricavpr.pth",
            "models/cricavpr_teacher.yaml", "CricaVPR (D²-VPR's teacher; evaluation only: batch-dependent)"),
    *[Release(f"dinov2_{b}{r}", FAIR.format(name=f"dinov2_{b}", reg=r), f"dinov2_{b}{r}_pretrain.pth", "",
              f"DINOv2 {b.upper()} backbone{' with registers' if r else ''} (set model.backbone: {b}{r})")
      for b in ("vits14", "vitb14") for r in ("", "_reg4")],
    _hf("hf_dinov2_small", "facebook/dinov2-small", "DINOv2 ViT-S/14 as Hugging Face publishes it"),
    _hf("hf_dinov2_with_registers_small", "facebook/dinov2-with-registers-small",
        "DINOv2 ViT-S/14 with registers as Hugging Face publishes it"),
]}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _DriveForm(html.parser.HTMLParser):
    """The action and hidden inputs of Google Drive's download-confirmation form."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "download-form":
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


def _open(url: str, start: int = 0) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": "vpr_ros", **({"Range": f"bytes={start}-"} if start else {})})
    try:
        return urllib.request.urlopen(req, timeout=60)  # noqa: S310 - URLs of the registry or the user's mirror
    except urllib.error.HTTPError as exc:
        raise CheckpointError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CheckpointError(f"{url}: cannot download ({getattr(exc, 'reason', exc)})") from None


def publisher_sha256(release: Release, pointer_url: str = "") -> str:
    """The sha256 the publisher gives ('' if none): a Hugging Face LFS pointer's ``oid``."""
    url = pointer_url or release.hf_pointer
    if not url:
        return ""
    with _open(url) as resp:
        text = resp.read(4096).decode("utf-8", "replace")
    m = re.search(r"^oid sha256:([0-9a-f]{64})$", text, re.M)
    if not m:
        raise CheckpointError(f"{url}: not a Git LFS pointer (no 'oid sha256:' line); cannot check the file")
    return m.group(1)


def download(url: str, dest: Path, drive: bool, progress: Callable[[int, int], None] | None = None) -> Path:
    """``url`` into ``dest``, resuming ``dest.part``; a Drive confirmation page is answered."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    resp = _open(url, start)
    if drive and (resp.headers.get("Content-Type") or "").startswith("text/html"):
        form = _DriveForm()
        form.feed(resp.read(1 << 20).decode("utf-8", "replace"))
        resp.close()
        if not form.action:
            raise CheckpointError(f"{url}: Google Drive answered with a page that is not its download form "
                                  "(quota exceeded, or the file is not shared); download it in a browser")
        url = form.action + "?" + urllib.parse.urlencode(form.fields)
        resp = _open(url, start)
    with resp:
        status = getattr(resp, "status", 200)
        if start and status != 206:
            start = 0  # the server does not resume: start again
        total = int(resp.headers.get("Content-Length") or 0) + start
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab" if start else "wb") as fh:
            done = start
            try:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            except (OSError, http.client.HTTPException) as exc:  # a dropped connection: what came stays in .part
                raise CheckpointError(f"{url}: connection lost at {done} of {total} bytes ({exc}); run again to "
                                      "resume") from None
    if total and part.stat().st_size != total:
        raise CheckpointError(f"{url}: download ended at {part.stat().st_size} of {total} bytes; run again to resume")
    with replaced_atomically(dest, CheckpointError) as tmp:
        os.replace(part, tmp)
    return dest


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    check: str  # how the file was checked, in words


def fetch(release: Release, cache: Path, url: str = "", pointer_url: str = "",
          progress: Callable[[int, int], None] | None = None) -> Fetched:
    """The release's file in ``cache`` (downloaded when missing), checked (see the module docstring).
    ``url`` / ``pointer_url``: a mirror in place of the publisher's addresses."""
    dest = cache / release.filename
    record = cache / "sha256.json"
    known: dict[str, str] = json.loads(record.read_text()) if record.is_file() else {}
    expected = publisher_sha256(release, pointer_url) if (release.hf_pointer or pointer_url) else ""
    if not dest.is_file():
        download(url or release.url, dest, release.drive or "/uc?" in (url or ""), progress)
    digest = sha256_of(dest)
    if expected:
        if digest != expected:
            dest.rename(dest.with_name(dest.name + ".bad"))
            raise CheckpointError(f"{dest}: sha256 {digest} is not the publisher's {expected} (kept as .bad; run again)")
        how = "sha256 matches the publisher's (Hugging Face LFS pointer)"
    elif release.name in known:
        if digest != known[release.name]:
            raise CheckpointError(f"{dest}: sha256 {digest} differs from {known[release.name]} recorded at its first "
                                  "download: the file changed (delete it to download again)")
        how = "sha256 matches the one recorded at the first download (the publisher gives none)"
    else:
        how = "the publisher gives no sha256: recorded now, checked at every later use"
    if known.get(release.name) != digest:
        known[release.name] = digest
        with replaced_atomically(record, CheckpointError) as tmp:
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    return Fetched(dest, digest, how)
