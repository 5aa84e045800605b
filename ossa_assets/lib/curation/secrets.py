"""Secret scrubbing: credentials are replaced before anything is stored, logged or trained on.

Two kinds of finding:
- credential formats that are unambiguous on their own (cloud keys, provider tokens, private
  keys, JWTs), wherever they appear;
- literal values assigned to secret-looking names (password, secret, token, api_key, ...) in
  YAML/JSON/ini/env style (`DB_PASSWORD: hunter2`, `"apiKey": "..."`, `TOKEN=abc`), the way
  CI variables leak. References to secret stores are not secrets and stay: `$DB_PASSWORD`,
  `${{ secrets.X }}`, `{{ vault ... }}`, `<placeholder>`, `***`, empty values.

Each replacement is `<REDACTED:kind>`; counts per kind go to the quality report (never the
values).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    ("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("aws_access_key_id", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})\b")),
    ("gitlab_token", re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}\b")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    ("stripe_key", re.compile(r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b")),
    # user:password@ in a URL, unless the password is a variable ($X, ${X}, ${{ secrets.X }})
    ("url_credentials", re.compile(r"(?<=://)[^/\s:@$]{1,64}:(?!\$)[^/\s@]{3,128}(?=@)")),
]

# name: value  /  "name": "value"  /  NAME=value — where the name says secret. The value must
# sit on the same line ([ \t]*): `password:` followed by a nested mapping is a schema, not a leak.
_SECRET_NAME = (r"[A-Za-z0-9_.-]*(?:passw(?:or)?d|passwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
                r"private[_-]?key|client[_-]?secret|credentials?)[A-Za-z0-9_.-]*")
_ASSIGN = re.compile(
    r"""(?P<prefix>(?P<q>["']?)(?P<name>""" + _SECRET_NAME + r""")(?P=q)[ \t]*(?::|=)[ \t]*)"""
    r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,#}\]]+)""",
    re.IGNORECASE,
)
# names that hold a reference to a secret, or are not secrets at all, though they contain the word
_NAME_EXCEPTIONS = re.compile(
    r"^(?:secrets|.*(?:_|-|\.)?(?:name|id|url|uri|file|path|env|ref|type|header|field|length|expiry|expires|ttl|"
    r"endpoint|scopes?|count|format|policy|input|output|required|description)|cancellation.*|.*tokenizer.*)$",
    re.IGNORECASE,
)
_NOT_A_SECRET = re.compile(
    r"""^(?:\$\{?\{?[^}]*\}?\}?|\$[A-Za-z_][A-Za-z0-9_]*|<[^>]*>|\*+|x+|\.\.\.|null|none|true|false|"""
    r"""changeme|your[_-].*|example.*|\{\{.*\}\}|%\(.*\)s|\[\]|\{\}|[|>][-+]?|!reference|&\w+|\*\w+|inherit)$""",
    re.IGNORECASE,
)
# YAML/JSON structure words, types and placeholders that follow a secret-ish name without being values
_STRUCTURAL = {"string", "integer", "boolean", "object", "array", "number", "password", "bearer", "basic",
               "apikey", "header", "query", "cookie", "oauth2", "openidconnect", "http", "required",
               "optional", "secret", "token", "masked", "protected", "file", "env", "from"}


def _is_placeholder(value: str) -> bool:
    v = value.strip().strip("\"'")
    if not v or len(v) < 6:
        return True  # too short to be a credential worth a finding (and too noisy)
    if v.endswith(":") or any(c in v for c in "()[]{};`"):
        return True  # the next key, or code (`os.environ.get("X")`), not a literal value
    if "#/" in v or re.search(r"\.(?:ya?ml|json)$", v):
        return True  # a $ref-style pointer to another document
    if v.lower() in _STRUCTURAL or _NOT_A_SECRET.match(v):
        return True
    if v.startswith(("$", "#/", "./", "../", "http://", "https://")) and "@" not in v:
        return True  # variable or reference, not a literal
    if re.fullmatch(r"[A-Za-z][A-Za-z ]*", v) and " " in v:
        return True  # prose ("the access token for the API")
    return False


def scrub(text: str, counts: Counter[str] | None = None) -> str:
    """Replace credentials in `text`; add what was found to `counts` (kind -> n)."""
    counts = counts if counts is not None else Counter()
    for kind, pattern in _FORMATS:
        text, n = pattern.subn(f"<REDACTED:{kind}>", text)
        if n:
            counts[kind] += n

    def assign(m: re.Match[str]) -> str:
        value = m.group("value")
        if "<REDACTED:" in value or _NAME_EXCEPTIONS.match(m.group("name")) or _is_placeholder(value):
            return m.group(0)
        counts["assigned_secret"] += 1
        q = value[0] if value[:1] in "\"'" else ""
        return f"{m.group('prefix')}{q}<REDACTED:assigned_secret>{q}"

    return _ASSIGN.sub(assign, text)


def scrub_obj(obj: Any, counts: Counter[str]) -> Any:
    """Scrub every string inside a JSON-like structure."""
    if isinstance(obj, str):
        return scrub(obj, counts)
    if isinstance(obj, list):
        return [scrub_obj(v, counts) for v in obj]
    if isinstance(obj, dict):
        return {k: scrub_obj(v, counts) for k, v in obj.items()}
    return obj
