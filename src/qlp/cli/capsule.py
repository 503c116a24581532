"""`qlp capsule verify|show|extract|diff` and `qlp keys show`: capsule files on disk."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote, urlparse

import typer

from qlp.cli.common import console, err_console, handle_errors, print_json, settings
from qlp.cli.safetext import escape, visible
from qlp.errors import UserInputError

if TYPE_CHECKING:  # the rest is imported when a command runs: the CLI starts fast
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from qlp.capsule.base import VerifyReport

app = typer.Typer(
    help="Check, inspect, unpack and compare QuantumCapsule files (.qlcapsule).",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="The key that signs capsules.", no_args_is_help=True)


@keys_app.callback()
def _keys() -> None:
    """The key that signs capsules."""  # a group even with one command: `qlp keys show`


CAPSULE_REF_HELP = (
    "A .qlcapsule file, the file:// location QLP prints for it, or a capsule id (QL-CAP-...), "
    "fetched from the configured capsule store."
)
CapsuleArg = Annotated[str, typer.Argument(help=CAPSULE_REF_HELP, show_default=False)]


def local_capsule(ref: str) -> Path:
    """The capsule `ref` names, as a local file: a path, a file:// URI, or a capsule id (then
    fetched from the configured store, local or Azure, into a folder removed when the command
    ends)."""
    from qlp.capsule.format import CAPSULE_ID_RE

    if CAPSULE_ID_RE.match(ref):
        from qlp.scratch import process_folder

        scratch = Path(
            tempfile.mkdtemp(prefix="capsule-", dir=process_folder(settings().home / "tmp"))
        )
        return asyncio.run(_fetch(ref, scratch))
    if ref.startswith("file://"):
        parsed = urlparse(ref)
        if parsed.netloc not in ("", "localhost"):
            raise UserInputError(f"{ref}: a file:// location on another host cannot be read here")
        return Path(unquote(parsed.path))
    if "://" in ref:
        raise UserInputError(
            f"{ref}: give a capsule file, its file:// location or its id (QL-CAP-...); "
            "other locations are fetched by id"
        )
    return Path(ref)


async def _fetch(capsule_id: str, folder: Path) -> Path:
    from qlp.engine.wiring import make_capsule_store, open_runtime
    from qlp.store.intent_queries import IntentQueries

    cfg = settings()
    async with open_runtime(cfg) as rt:
        found = await IntentQueries(rt.store).capsule(capsule_id)
        if found is None:
            raise UserInputError(f"no capsule {capsule_id} in this QLP's database")
        record = found[0]
        from qlp.capsule.format import SUFFIX

        target = folder / f"{capsule_id}{SUFFIX}"
        return await asyncio.to_thread(make_capsule_store(cfg).get, record.uri, target)


JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Require this signer: ed25519:<base64> (as `qlp keys show` prints it) or a file "
        "holding it or a PEM public key. Without it the key named in the capsule is used.",
    ),
]


def _key(value: str | None) -> Ed25519PublicKey | None:
    from qlp.capsule.keys import parse_public_key

    return parse_public_key(value) if value else None


def _signer_line(report: VerifyReport) -> str:
    if report.key_source == "given":
        return f"signed by the given key {escape(report.public_key)}"
    return (
        f"self-signed check against the key the capsule names ({escape(report.public_key)}); "
        "pass --key to require a known signer"
    )


@app.command("verify")
@handle_errors
def verify(path: CapsuleArg, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Check the signature, every entry's size and sha256, and that none is missing or extra.

    Exit 0 when the capsule is intact, 1 naming each problem when it is not.
    """
    from qlp.capsule.verify import verify_capsule

    report = verify_capsule(local_capsule(path), _key(key))
    if as_json:
        print_json(report.to_dict())
    elif report.ok:
        console.print(
            f"[green]OK[/] {escape(report.capsule_id)} v{escape(report.version)}: "
            f"{report.entries_checked} entries match the manifest; {_signer_line(report)}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        err_console.print(
            f"[bold red]FAILED[/] {escape(str(path))}: {len(report.problems)} problem(s)",
            highlight=False,
        )
        for problem in report.problems:
            err_console.print(f"  {escape(str(problem))}", highlight=False, soft_wrap=True)
        if report.public_key:
            err_console.print(f"  ({_signer_line(report)})", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def _show_text(manifest: dict[str, Any], report: VerifyReport) -> None:
    intent = manifest.get("intent") or {}
    totals = manifest.get("totals") or {}
    entries = manifest.get("entries") or []
    project = [e for e in entries if str(e.get("path", "")).startswith("project/")]
    cost = totals.get("cost_usd")
    cost_text = "unknown" if cost is None else f"${cost:.4f}"
    if cost is not None and totals.get("unpriced_calls"):
        cost_text = f"at least {cost_text} ({totals['unpriced_calls']} unpriced call(s))"
    lines = [
        f"[bold]{escape(manifest.get('capsule_id'))}[/] version {escape(manifest.get('version'))}"
        + (f" (parent {escape(manifest['parent'])})" if manifest.get("parent") else ""),
        f"intent    {escape(str(intent.get('id')))}: {escape(str(intent.get('text')))}",
        "models    "
        + (
            escape(", ".join(f"{m['provider']}:{m['model']}" for m in manifest.get("models") or []))
            or "-"
        ),
        f"tokens    {totals.get('input_tokens')} in, {totals.get('output_tokens')} out;"
        f" cost {cost_text}",
        f"files     {len(project)} project file(s), {len(entries)} entries, "
        f"{sum(int(e.get('size', 0)) for e in entries)} bytes",
        "signature "
        + ("[green]valid[/]" if report.signature_valid else "[red]INVALID[/]")
        + f" ({_signer_line(report)})",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    scores = manifest.get("scores") or {}
    if scores:
        console.print(
            "scores    "
            + ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in sorted(scores.items())),
            highlight=False,
        )
    for gate in manifest.get("gates") or []:
        passed = gate.get("passed")
        mark = "n/a" if passed is None else ("[green]pass[/]" if passed else "[red]FAIL[/]")
        console.print(
            f"gate      {escape(str(gate.get('name')))}: {mark} {escape(str(gate.get('detail')))}",
            highlight=False,
        )
    decision = manifest.get("decision")
    if decision:
        console.print(
            f"decision  {escape(str(decision['decision']))} by {escape(str(decision['by']))} "
            f"at {decision['at']}"
            + (f": {escape(str(decision['reason']))}" if decision.get("reason") else ""),
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print("decision  none recorded", highlight=False)


@app.command("show")
@handle_errors
def show(path: CapsuleArg, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Print what a capsule holds: intent, models, cost, scores, gates, decision.

    The signature is checked (quickly: entries are not read; `verify` reads them).
    """
    from qlp.capsule.verify import verify_capsule

    report = verify_capsule(local_capsule(path), _key(key), contents=False)
    if report.manifest is None:
        err_console.print(f"[bold red]error:[/] {escape(str(path))} has no readable manifest")
        for problem in report.problems:
            err_console.print(f"  {escape(str(problem))}", highlight=False)
        raise typer.Exit(1)
    if as_json:
        print_json(
            {
                "manifest": report.manifest,
                "signature_valid": report.signature_valid,
                "key_source": report.key_source,
                "public_key": report.public_key,
                "problems": [str(p) for p in report.problems],
            }
        )
        return
    _show_text(report.manifest, report)
    for problem in report.problems:
        err_console.print(f"[red]problem[/]   {escape(str(problem))}", highlight=False)


@app.command("extract")
@handle_errors
def extract(
    path: CapsuleArg,
    dest: Annotated[Path, typer.Argument(help="Folder to unpack into.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Overwrite files already there.")] = False,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a capsule and unpack it into DEST (all of it: manifest, project/, reports/...).

    Refuses unsafe names, symlinks, unlisted entries and a capsule that does not verify;
    never overwrites a file unless --force. A refused capsule leaves nothing behind.
    """
    from qlp.capsule.extract import extract_capsule

    result = extract_capsule(local_capsule(path), dest, force=force, public_key=_key(key))
    if as_json:
        print_json(
            {
                "capsule_id": result.capsule_id,
                "dest": str(result.dest),
                "files": result.files,
                "key_source": result.report.key_source,
                "public_key": result.report.public_key,
            }
        )
        return
    console.print(
        f"extracted {escape(result.capsule_id)} ({result.files} files) into "
        f"{escape(str(result.dest))}; "
        f"{_signer_line(result.report)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("diff")
@handle_errors
def diff(
    a: Annotated[str, typer.Argument(help="The older capsule (" + CAPSULE_REF_HELP + ")")],
    b: Annotated[str, typer.Argument(help="The newer capsule.", show_default=False)],
    patch: Annotated[
        bool, typer.Option("--patch", "-p", help="Show a unified diff of changed text files.")
    ] = False,
    all_entries: Annotated[
        bool, typer.Option("--all", help="Compare every entry, not only project/ files.")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Compare without checking every entry first.")
    ] = False,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the files added, removed and changed from capsule A to capsule B."""
    from qlp.capsule.diff import diff_capsules

    result = diff_capsules(
        local_capsule(a),
        local_capsule(b),
        patch=patch,
        scope="all" if all_entries else "project",
        verify=not no_verify,
        public_key=_key(key),
    )
    if as_json:
        print_json(result.to_dict())
        return
    console.print(
        f"{escape(result.a_id)} v{escape(result.a_version)} -> "
        f"{escape(result.b_id)} v{escape(result.b_version)}: "
        f"{len(result.changes)} changed, {result.unchanged} unchanged",
        highlight=False,
    )
    marks = {"added": "[green]A[/]", "removed": "[red]D[/]", "changed": "[yellow]M[/]"}
    for change in result.changes:
        console.print(f"{marks[change.status]} {escape(change.path)}", highlight=False)
    for name, (old, new) in result.manifest_changes.items():
        if name in ("scores", "decision", "version", "parent"):
            console.print(
                f"  {name}: {escape(_field(old))} -> {escape(_field(new))}", highlight=False
            )
        else:
            console.print(f"  {name} changed", highlight=False)
    if patch:
        for change in result.changes:
            if change.binary:
                console.print(f"Binary files differ: {escape(change.path)}", highlight=False)
            elif change.patch:
                console.out(visible(change.patch), end="", highlight=False)


def _field(value: object) -> str:
    """A manifest field for a person: `overall 87, coverage n/a`, not a Python repr."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_field_item(v)}" for k, v in value.items()) or "none"
    return str(value)


def _field_item(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


@keys_app.command("show")
@handle_errors
def keys_show(
    pem: Annotated[bool, typer.Option("--pem", help="Print the public key as PEM.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the public key capsules are signed with (creating the local key on first use)."""
    cfg = settings()
    secret = cfg.signing_key.get_secret_value() if cfg.signing_key is not None else None
    from qlp.capsule.keys import (
        key_file_path,
        load_or_create_signing_key,
        public_key_pem,
        public_key_text,
    )

    path = key_file_path(cfg.home)
    created = secret is None and not path.exists()
    key = load_or_create_signing_key(cfg.home, secret)
    source = "QLP_SIGNING_KEY" if secret else str(path)
    if as_json:
        print_json(
            {
                "public_key": public_key_text(key),
                "public_key_pem": public_key_pem(key),
                "source": source,
                "created": created,
            }
        )
        return
    if pem:
        console.out(public_key_pem(key), end="", highlight=False)
    else:
        console.out(public_key_text(key), highlight=False)
    if created:
        err_console.print(f"created a new signing key in {source}", highlight=False)
    else:
        err_console.print(f"signing key: {source}", highlight=False)


__all__ = ["app", "keys_app"]
