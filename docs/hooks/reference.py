"""mkdocs hook: the CLI reference from typer's commands and the HTTP reference from the app's OpenAPI schema.

Both pages are generated at build time from the code, so they follow it; nothing here is written into docs/.
"""

from __future__ import annotations

import json
import os
import re

from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    """Add reference/cli.md, reference/http.md and reference/openapi.json to the build."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    schema = _openapi()
    for name, content in (
        ("reference/cli.md", cli_markdown()),
        ("reference/http.md", http_markdown(schema)),
        ("reference/openapi.json", json.dumps(schema, indent=2)),
    ):
        files.append(File.generated(config, name, content=content))
    return files


_SPHINX_ROLE = re.compile(r":(?:meth|class|func|attr|mod|data|exc|obj):(<code>)~?")


def on_page_content(html: str, page, config, files) -> str:
    """Docstrings use Sphinx roles (``:class:`X```); show them as the code they name."""
    return _SPHINX_ROLE.sub(r"\1", html)


# --- CLI ------------------------------------------------------------------------------------------------


def cli_markdown() -> str:
    """Every `pooledir` command: usage, help text, and a table of its arguments and options."""
    import typer

    from pooledir.cli import app

    root = typer.main.get_command(app)
    lines = [
        "# CLI reference",
        "",
        "Generated at build time from the typer app in `pooledir/cli/` (`pooledir COMMAND --help` prints the same).",
        "Errors a user can fix print one line `error: ...` and exit 2; Ctrl-C prints `interrupted` and exits 130.",
        "",
    ]
    for path, cmd in _walk(root, ["pooledir"]):
        lines += _command(path, cmd)
    return "\n".join(lines)


def _walk(cmd, path: list[str]):
    yield path, cmd
    for name in sorted(getattr(cmd, "commands", {}) or {}):
        sub = cmd.commands[name]
        if not getattr(sub, "hidden", False):
            yield from _walk(sub, [*path, name])


def _command(path: list[str], cmd) -> list[str]:
    pieces = [p.metavar or p.name.upper() for p in cmd.params if p.param_type_name == "argument"]
    usage = " ".join([*path, "[OPTIONS]", *pieces] if cmd.params else path)
    out = [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", (cmd.help or "").strip(), ""]
    out += ["```text", usage.strip(), "```", ""]
    rows = []
    for p in cmd.params:
        if p.name in ("help", "install_completion", "show_completion"):
            continue
        option = p.param_type_name == "option"
        names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts]) if option else f"`{p.metavar or p.name}`"
        default = "" if p.required or p.default in (None, ()) or callable(p.default) else f"`{p.default}`"
        helptext = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {names} | {_type(p)} | {'yes' if p.required else ''} | {default} | {helptext} |")
    if rows:
        out += ["| name | type | required | default | help |", "| --- | --- | --- | --- | --- |", *rows, ""]
    return out


def _type(p) -> str:
    """The parameter's Python annotation (typer keeps it), e.g. ``int``, ``Path``, ``list[str]``."""
    annotation = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if annotation is None:
        name = getattr(getattr(p, "type", None), "name", "")
    elif isinstance(annotation, type):
        name = annotation.__name__
    else:
        name = str(annotation).replace("typing.", "").replace("pathlib.", "")
    return name.replace("|", "\\|")


# --- HTTP -----------------------------------------------------------------------------------------------


def _openapi() -> dict:
    from pooledir.service.main import create_app

    return create_app().openapi()


def http_markdown(schema: dict) -> str:
    """Routes (parameters, request and response models) and the models' fields, from the OpenAPI schema."""
    lines = [
        "# HTTP reference",
        "",
        "Generated at build time from `pooledir.service.main.create_app().openapi()` "
        f"(OpenAPI {schema.get('openapi')}); "
        "the raw schema is [openapi.json](openapi.json), and a running service shows it at `/docs`.",
        "",
    ]
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            lines += _operation(method.upper(), path, op)
    lines += ["## Models", ""]
    for name, model in schema.get("components", {}).get("schemas", {}).items():
        lines += _model(name, model)
    return "\n".join(lines)


def _ref(s: dict) -> str:
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in s:
        return " or ".join(_ref(x) for x in s["anyOf"])
    if s.get("type") == "array":
        return f"array of {_ref(s.get('items', {}))}"
    return s.get("type", "any")


def _operation(method: str, path: str, op: dict) -> list[str]:
    out = [f"### {method} `{path}`", "", (op.get("summary") or ""), "", (op.get("description") or "").strip(), ""]
    params = op.get("parameters", [])
    if params:
        out += ["| parameter | in | type | required |", "| --- | --- | --- | --- |"]
        out += [
            f"| `{p['name']}` | {p['in']} | {_ref(p.get('schema', {}))} | {p.get('required', False)} |" for p in params
        ]
        out.append("")
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        out += [f"Request body: {_ref(body)}", ""]
    for code, resp in op.get("responses", {}).items():
        model = resp.get("content", {}).get("application/json", {}).get("schema")
        out.append(f"- **{code}** {resp.get('description', '')}" + (f": {_ref(model)}" if model else ""))
    return [*out, ""]


def _model(name: str, model: dict) -> list[str]:
    out = [f"### {name}", "", (model.get("description") or "").strip(), ""]
    props = model.get("properties", {})
    if props:
        required = set(model.get("required", []))
        out += ["| field | type | required | default | description |", "| --- | --- | --- | --- | --- |"]
        for field, s in props.items():
            default = f"`{json.dumps(s['default'])}`" if "default" in s else ""
            desc = (s.get("description") or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{field}` | {_ref(s)} | {'yes' if field in required else ''} | {default} | {desc} |")
        out.append("")
    return out
