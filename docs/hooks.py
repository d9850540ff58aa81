"""mkdocs hooks: the generated pages of the docs site (mkdocs.yml `hooks:`).

- The CLI reference is rendered from `bge_ref.cli.parser()`, the parser `bge-ref` itself runs, so a
  flag cannot be documented differently from how it parses.
- The HTTP reference is rendered from the server's OpenAPI 3.1 document, `bge_ref.server.openapi.spec()`,
  the same document the server answers at `GET /openapi.json`.
- The notebooks' figures (notebooks/figures/*.png) are published under figures/, without a copy in docs/.

`cli_markdown` and `openapi_markdown` are pure functions (tests/test_docs.py checks them on small inputs).
A page asks for a generated part with a marker line: `<!-- generated: cli -->` or `<!-- generated: http -->`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "notebooks" / "figures"


# -- CLI ---------------------------------------------------------------------------------------------
def _cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _flag(action: argparse.Action) -> str:
    names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
    takes_value = action.nargs != 0 and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    if action.option_strings and takes_value:
        metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices
                                     else action.dest.upper())
        names += f" `{metavar}`"
    return names


def _default(action: argparse.Action) -> str:
    if action.required or not action.option_strings:
        return "required" if action.nargs not in ("*", "?") else ""
    if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return f"`{action.default}`"


def _arguments_table(p: argparse.ArgumentParser) -> list[str]:
    rows = [a for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if not rows:
        return []
    lines = ["| argument | default | what |", "| --- | --- | --- |"]
    for a in rows:  # the choices show in the flag's metavar, {cls,mean}
        lines.append(f"| {_cell(_flag(a))} | {_default(a)} | {_cell(a.help or '')} |")
    return lines


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def cli_markdown(parser: argparse.ArgumentParser, level: int = 2) -> str:
    """A markdown reference of a parser and its subcommands: usage, description, one table of arguments."""
    out = [f"```text\n{parser.format_usage().strip()}\n```", ""]
    if parser.description:
        out += [parser.description, ""]
    table = _arguments_table(parser)
    if table:
        out += table + [""]
    for name, sub in _subcommands(parser).items():
        out += [f"{'#' * level} `{sub.prog}`", "", cli_markdown(sub, level + 1), ""]
    return "\n".join(out).rstrip() + "\n"


# -- HTTP (OpenAPI 3.1) ------------------------------------------------------------------------------
def _resolve(spec: dict, node: dict) -> dict:
    """Follow a local $ref (`#/components/schemas/Name`)."""
    while isinstance(node, dict) and "$ref" in node:
        target = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_text(spec: dict, schema: dict | None, depth: int = 0) -> str:
    """A JSON Schema as a one-line type: `{"text": str | [str], "pooling"?: "mean" | "cls"}`."""
    if not schema:
        return "any"
    name = schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else None
    schema = _resolve(spec, schema)
    if depth > 2 and name:  # deep nesting: name the component rather than expand it
        return name
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " | ".join(schema_text(spec, s, depth + 1) for s in schema[key])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(schema_text(spec, dict(schema, type=k), depth + 1) for k in kind)
    if kind == "array":
        return f"[{schema_text(spec, schema.get('items'), depth + 1)}]"
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", []))
        fields = [f"{json.dumps(k)}{'' if k in required else '?'}: {schema_text(spec, v, depth + 1)}"
                  for k, v in schema.get("properties", {}).items()]
        return "{" + ", ".join(fields) + "}" if fields else "object"
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}.get(kind, "any")


def _body(spec: dict, content: dict | None) -> str:
    """A body's type: a named schema as a link to its entry under Schemas, any other expanded."""
    if not content:
        return ""
    media, body = next(iter(content.items()))
    schema = body.get("schema") or {}
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        text = f"[`{name}`](#{name.lower()})"
    else:
        text = f"`{_cell(schema_text(spec, schema))}`"
    return text + ("" if media == "application/json" else f" ({media})")


def _properties_table(spec: dict, schema: dict) -> list[str]:
    """An object schema's fields: name, type, required, description."""
    schema = _resolve(spec, schema)
    props = schema.get("properties")
    if not props:
        return []
    required = set(schema.get("required", []))
    lines = ["| field | type | required | what |", "| --- | --- | --- | --- |"]
    for name, sub in props.items():
        what = _resolve(spec, sub).get("description", "")
        lines.append(f"| `{name}` | `{_cell(schema_text(spec, sub, 1))}` | {'yes' if name in required else ''} | "
                     f"{_cell(what)} |")
    return lines + [""]


def _schemas_section(spec: dict) -> list[str]:
    schemas = spec.get("components", {}).get("schemas", {})
    if not schemas:
        return []
    out = ["## Schemas", ""]
    for name, schema in schemas.items():
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [schema["description"], ""]
        out += [f"`{schema_text(spec, schema)}`", ""]
        alternatives = schema.get("oneOf") or schema.get("anyOf") or [schema]
        for alternative in alternatives:
            out += _properties_table(spec, alternative)
    return out


def openapi_markdown(spec: dict) -> str:
    """A markdown reference of an OpenAPI 3.x document: each operation with its parameters, body and answers."""
    info = spec.get("info", {})
    out = [f"OpenAPI {spec.get('openapi', '?')} document of {info.get('title', 'the API')} "
           f"{info.get('version', '')}".rstrip() + ".", ""]
    if info.get("description"):
        out += [info["description"], ""]
    for path, item in spec.get("paths", {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            op = item.get(method)
            if op is None:
                continue
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [op["summary"], ""]
            if op.get("description"):
                out += [op["description"], ""]
            params = [_resolve(spec, p) for p in item.get("parameters", []) + op.get("parameters", [])]
            if params:
                out += ["| parameter | in | type | what |", "| --- | --- | --- | --- |"]
                out += [f"| `{p['name']}` | {p.get('in', '')} | `{_cell(schema_text(spec, p.get('schema')))}` | "
                        f"{_cell(p.get('description', ''))} |" for p in params]
                out.append("")
            if op.get("security") == [] or (op.get("security") is None and not spec.get("security")):
                out += ["No key needed.", ""]
            body = _resolve(spec, op.get("requestBody", {}))
            if body:
                out += [f"Request body: {_body(spec, body.get('content'))}", ""]
                if body.get("description"):
                    out += [body["description"], ""]
            responses = op.get("responses", {})
            if responses:
                out += ["| status | what | body |", "| --- | --- | --- |"]
                for status, r in responses.items():
                    r = _resolve(spec, r)
                    out.append(f"| {status} | {_cell(r.get('description', ''))} | {_body(spec, r.get('content'))} |")
                out.append("")
    out += _schemas_section(spec)
    return "\n".join(out).rstrip() + "\n"


def http_markdown() -> str:
    """The HTTP reference of the server, from its own OpenAPI document."""
    from bge_ref.server.openapi import spec  # on failure the strict build fails: no reference without a spec
    return openapi_markdown(spec())


# -- mkdocs events -----------------------------------------------------------------------------------
GENERATED = {
    "<!-- generated: cli -->": lambda: cli_markdown(__import__("bge_ref.cli", fromlist=["parser"]).parser()),
    "<!-- generated: http -->": http_markdown,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, render in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown


def on_files(files, config):
    """Publish the notebooks' figures as figures/NAME.png."""
    from mkdocs.structure.files import File
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files
