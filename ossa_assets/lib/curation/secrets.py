"""Secret scrubbing: credentials are replaced before anything is stored, logged or trained on.

Three layers, in this order:
- our own credential formats that are unambiguous on their own (cloud keys, provider tokens,
  private key blocks, JWTs, user:password@ in URLs), over the whole text;
- our own line rules for the shapes CI files leak in: literal values assigned to secret-looking
  names in YAML/JSON/ini/env style (`DB_PASSWORD: hunter2`, `"apiKey": "..."`, `TOKEN=abc`,
  passphrases with spaces, short `*_PASSWORD` values, `*_ENV` names), `docker login -p ...` and
  other CLIs' password flags, `Authorization:` headers and bearer tokens, `aws configure set
  aws_secret_access_key ...`;
- detect-secrets (Yelp's detector, pinned) format plugins, line by line, for what ours do not
  know (Azure storage keys, Twilio/SendGrid/Mailchimp/npm/PyPI/OpenAI/Discord/Telegram/Square/
  Artifactory tokens, IBM and SoftLayer keys, AWS secret keys next to an "aws" name, ...); where
  both know a format, ours ran first and its kind is the one counted.
References to secret stores are not secrets and stay: `$DB_PASSWORD`, `${{ secrets.X }}`,
`{{ vault ... }}`, `<placeholder>`, `***`, empty values, schema words (`format: password`).

Each replacement is `<REDACTED:kind>`; counts per kind go to the quality report (never the
values). The line layers only look at lines a cheap trigger regex flags (a keyword or literal
prefix every rule needs), which keeps scrubbing fast on large XML/JSON documents.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter
from typing import Any, Callable, Iterable

from ossa_assets.lib.curation.secret_plugins import PLUGINS, Plugin, run_plugin

# -- our own unambiguous formats, over the whole text (first) ----------------------------------

_B64_LINE = r"[ \t]*[A-Za-z0-9+/=]{16,}[ \t]*\r?\n"
_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    ("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    # a block cut short (no END line): the header and the base64 lines after it
    ("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[ \t]*\r?\n(?:[A-Za-z-]+:[^\n]*\n)*(?:" + _B64_LINE
        + r")+(?:[ \t]*[A-Za-z0-9+/=]+)?")),
    ("aws_access_key_id", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b")),
    # the secret half of a key pair written beside its id (`AKIA…:<40 chars>`, `AKIA… <40 chars>`)
    ("aws_secret_access_key", re.compile(
        r"(?<=<REDACTED:aws_access_key_id>[:/|,;= \t])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})\b")),
    ("gitlab_token", re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}\b")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    ("stripe_key", re.compile(r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b")),
    # user:password@ in a URL, unless the password is a variable ($X, ${X}, ${{ secrets.X }})
    ("url_credentials", re.compile(r"(?<=://)[^/\s:@$]{1,64}:(?!\$)[^/\s@]{3,128}(?=@)")),
]

# -- our own line rules (run on a line before the plugins) -------------------------------------

# name: value  /  "name": "value"  /  NAME=value — where the name says secret. The value must
# sit on the same line ([ \t]*): `password:` followed by a nested mapping is a schema, not a leak.
_SECRET_WORDS = (r"passw(?:or)?d|passwd|passphrase|(?<![a-z])pass(?![a-z])|secret|token|api[_-]?key|apikey|"
                 r"access[_-]?key|private[_-]?key|client[_-]?secret|credentials?")
_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:" + _SECRET_WORDS + r")[A-Za-z0-9_.-]*"
_ASSIGN = re.compile(
    r"""(?P<prefix>(?P<q>["']?)(?P<name>""" + _SECRET_NAME + r""")(?P=q)[ \t]*(?P<op>:|=)[ \t]*)"""
    r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,#}\]]+)""",
    re.IGNORECASE,
)
# names that hold a reference to a secret, or are not secrets at all, though they contain the word
# (`*_ENV` is not among them: `DEPLOY_TOKEN_ENV: 9f8e...` is a literal; `TOKEN_ENV: GITHUB_TOKEN`,
# the name of a variable, is kept by _VAR_NAME_VALUE)
_NAME_EXCEPTIONS = re.compile(
    r"^(?:secrets|.*(?:_|-|\.)?(?:name|id|url|uri|file|path|ref|type|header|field|length|expiry|expires|ttl|"
    r"endpoint|scopes?|count|format|policy|input|output|required|description)|cancellation.*|.*tokenizer.*)$",
    re.IGNORECASE,
)
# names whose value is the password itself (short values count: `REDIS_PASSWORD=pw1`)
_PASSWORD_NAME = re.compile(r"(?:passw(?:or)?d|passwd|passphrase|(?<![a-z])pass)$", re.IGNORECASE)
_ENV_NAME = re.compile(r"(?:env|var|variable)$", re.IGNORECASE)
# a value that names where the secret is (`server-password: MAVEN_PASSWORD`, `credentials:
# aws_credentials`): an identifier that itself carries a secret word, not a literal
_NAMES_A_SECRET = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)+")
# ALL_CAPS (an environment variable) anywhere, or a lower-case name ending in the word
_SECRET_WORD_IN_VALUE = re.compile(
    r"^[A-Z0-9_-]*(?:PASSW(?:OR)?D|PASSWD|SECRET|TOKEN|API[_-]?KEY|CREDENTIALS?|PASS(?:PHRASE)?)[A-Z0-9_-]*$|"
    r"(?:passw(?:or)?d|passwd|secret|token|api[_-]?key|credentials?|passphrase)$")
# pagination and sync cursors are called tokens too
_CURSOR_NAME = re.compile(r"(?:page|next|continuation|cursor|sync|resume|marker)[_-]?token$", re.I)
_VAR_NAME_VALUE = re.compile(r"[A-Z][A-Z0-9_]*")
_UPPER_ENV_STYLE = re.compile(r"[A-Z0-9]+(?:_[A-Z0-9]+)+")  # MYSQL_ROOT_PASSWORD, not `password`
_NOT_A_SECRET = re.compile(
    r"""^(?:\$\{?\{?[^}]*\}?\}?|\$[A-Za-z_][A-Za-z0-9_]*|<[^>]*>|\*+|x+|\.\.\.|null|none|nil|true|false|"""
    r"""changeme|your[_-].*|example.*|\{\{.*\}\}|%\(.*\)s|\[\]|\{\}|[|>][-+]?|!reference|&\w+|\*\w+|inherit|"""
    r"""\d*\*\d*[A-Za-z][\w-]*)$""",  # the last: ABNF (`token = 1*tchar`)
    re.IGNORECASE,
)
_BOOLEAN_WORDS = {"yes", "no", "on", "off", "y", "n", "true", "false", "enabled", "disabled", "required",
                  "optional", "none", "null", "nil", "~", "-", "empty", "random"}
# YAML/JSON structure words, types and placeholders that follow a secret-ish name without being values
_STRUCTURAL = {"string", "integer", "boolean", "object", "array", "number", "password", "bearer", "basic",
               "apikey", "header", "query", "cookie", "oauth2", "openidconnect", "http", "required",
               "optional", "secret", "token", "masked", "protected", "file", "env", "from"}
# words that make a multi-word value prose (a description), not a passphrase
_PROSE_WORDS = frozenset(
    "a an the of to for in on at by with from and or but is are be been was were this that these those it "
    "its as if not no use used using uses set see here there value values when where which who will would "
    "must should can could may might your you our we they their his her my me i do does done has have how "
    "what than then also only any all each every per via into onto about none given provided required "
    "optional empty default unset blank needed same".split()
)
_KEYWORDS_IN_PROSE = re.compile(r"(?i)^(?:passw(?:or)?ds?|passwd|passphrase|secrets?|tokens?|keys?|credentials?|"
                                r"api|apikey|auth\w*|login|user(?:name)?s?)$")
_PASSPHRASE_WORD = re.compile(r"[^\s\"'`$&|;<>(){}\[\],=#\\/-][^\s\"'`$&|;<>(){}\[\],=#\\/]{0,31}")
_CODE_BEFORE_NAME = re.compile(r"(?:\b(?:class|struct|interface|record|enum|extends|implements)\s+)$")

# CLIs that take a password as an argument
_VALUE = r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s;|&)"'`]+)"""
_CLI_RULES: list[tuple[str, re.Pattern[str]]] = [
    # docker login -u x -p SECRET / --password SECRET / --password=SECRET / -pSECRET (never
    # --password-stdin); the same for podman, buildah, skopeo, nerdctl, helm registry, oras
    ("cli_password", re.compile(
        r"\b(?:docker|podman|buildah|skopeo|nerdctl|oras|helm(?:[ \t]+registry)?)[ \t]+login\b[^\n;|&]*?[ \t]"
        r"(?:-p|--password)(?:[ \t]*=[ \t]*|[ \t]+|(?=[^\s=-]))" + _VALUE)),
    # mysql -uroot -pSECRET / --password=SECRET (`-p SECRET`, with a space, prompts: SECRET is a database)
    ("cli_password", re.compile(
        r"\b(?:mysql|mysqladmin|mysqldump|mysqlsh|mysqlimport|mariadb(?:-dump|-admin)?)(?![\w.-])[^\n;|&]*?[ \t]"
        r"(?:-p(?=[^\s=-])|--password=)" + _VALUE)),
    ("cli_password", re.compile(r"\bsshpass[ \t]+-p[ \t]*" + _VALUE)),
    # curl -u user:SECRET / --user user:SECRET
    ("cli_password", re.compile(
        r"\bcurl\b[^\n;|&]*?[ \t](?:-u|--user(?![\w-]))[ \t]*=?[ \t]*[\"']?[^\s:\"'$]*:(?P<value>[^\s\"'@]+)")),
    # aws configure set [--profile p] [profile.]aws_secret_access_key SECRET
    ("aws_cli", re.compile(
        r"\baws[ \t]+configure[ \t]+set\b[^\n;|&]*?[ \t](?:[\w-]+\.)?"
        r"(?P<key>aws_secret_access_key|aws_access_key_id|aws_session_token)[ \t]+" + _VALUE, re.IGNORECASE)),
]
# Authorization: Bearer|Basic|token ... (header, JSON, curl -H); Proxy-Authorization too
_AUTH_HEADER = re.compile(
    r"""\b(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?"""
    r"""(?:(?P<scheme>bearer|basic|token|digest|apikey|api-key|jwt|negotiate|ntlm|hmac|sso-key|key|otp)[ \t]+)?"""
    r"""(?P<value>[A-Za-z0-9._~+/:-]+=*)(?![^\s"'`,;)\]}\\])""",
    re.IGNORECASE,
)
# a bare `Bearer <credential>` anywhere (an OpenAPI example, a header built in a script)
_BEARER = re.compile(r"\b(?:bearer|--oauth2-bearer)[ \t]+(?P<value>[A-Za-z0-9._~+/-]+=*)(?![^\s\"'`,;)\]}\\])",
                     re.IGNORECASE)

# what every line rule needs somewhere on a line (searched in the lowercased text): lines it
# misses are left alone
_LINE_TRIGGER = re.compile(r"pass|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|"
                           r"authorization|bearer|login|curl|mysql|mariadb|aws[ \t]+configure")
_ASCII_LOWER = str.maketrans({c: c + 32 for c in range(ord("A"), ord("Z") + 1)})


def _strip_quotes(value: str) -> str:
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
    return v.strip()


def _is_reference(v: str) -> bool:
    """A variable, template, placeholder or pointer, not a literal."""
    if not v or _NOT_A_SECRET.match(v):
        return True
    if any(c in v for c in "()[]{};`") or v.endswith(":"):
        return True  # the next key, or code (`os.environ.get("X")`), not a literal value
    if "#/" in v or re.search(r"\.(?:ya?ml|json)$", v):
        return True  # a $ref-style pointer to another document
    if v.startswith(("$", "#/", "./", "../", "http://", "https://")) and "@" not in v:
        return True  # variable or reference, not a literal
    return False


def _is_passphrase(words: list[str]) -> bool:
    """Several words that are a password (`correct horse battery staple`), not a description."""
    if not 2 <= len(words) <= 10:
        return False
    if any(not _PASSPHRASE_WORD.fullmatch(w) for w in words):
        return False
    lowered = [w.lower().strip(".!?:") for w in words]
    if any(_KEYWORDS_IN_PROSE.match(w) for w in lowered) or words[-1].endswith((".", ":")):
        return False  # "User password", "The secret of the app.", the start of a list
    prose = sum(w in _PROSE_WORDS for w in lowered)
    return prose == 0 or (prose == 1 and len(words) > 2)  # "Set this to ...", "not set"


def _is_literal_secret(name: str, value: str) -> bool:
    v = _strip_quotes(value)
    password = bool(_PASSWORD_NAME.search(name))
    if _is_reference(v):
        return False
    if v.lower() in _BOOLEAN_WORDS or (v.isdigit() and len(v) <= 2):
        return False  # MYSQL_RANDOM_ROOT_PASSWORD: yes, REQUIRE_PASSWORD: 1
    if v.lower() in _STRUCTURAL and not (password and _UPPER_ENV_STYLE.fullmatch(name)):
        return False  # `password: string`, `type: apiKey`; but `POSTGRES_PASSWORD: password` is one
    if _ENV_NAME.search(name) and _VAR_NAME_VALUE.fullmatch(v):
        return False  # DEPLOY_TOKEN_ENV: DEPLOY_TOKEN names the variable that holds it
    if _NAMES_A_SECRET.fullmatch(v) and _SECRET_WORD_IN_VALUE.search(v):
        return False  # server-password: MAVEN_PASSWORD, Credentials: aws_credentials
    if _CURSOR_NAME.search(name):
        return False  # PageToken=abc, nextPageToken: "CAoQAA": a position in a listing
    if " " in v:
        return (password or "secret" in name.lower()) and _is_passphrase(v.split())
    # passwords are secrets at any length; other names need 6 characters (`token: abc` is noise)
    return len(v) >= (2 if password else 6)


def _assignments(line: str, counts: Counter[str]) -> str:
    out: list[str] = []
    pos = 0
    for m in _ASSIGN.finditer(line):
        if m.start() < pos:
            continue  # inside a passphrase already redacted
        name, value = m.group("name"), m.group("value")
        if "<REDACTED:" in value or _NAME_EXCEPTIONS.match(name) or _CODE_BEFORE_NAME.search(line, 0, m.start()):
            continue
        end = m.end("value")
        quoted = value[:1] in "\"'"
        if not quoted and line[end:end + 1] in (" ", "\t"):
            # more words after an unquoted value, before any ` # comment`
            tail = line[end:]
            comment = re.search(r"[ \t]#", tail)
            tail = (tail[: comment.start()] if comment else tail).rstrip()
            words = [value, *tail.split()]
            # YAML (`name: a b c`) and ini (`name = a b c`) values run to the end of the line;
            # in shell (`NAME=a cmd`) the value stops at the space
            if len(words) > 1 and (m.group("op") == ":" or m.group("prefix")[-1:] in " \t"
                                   or re.search(r"[ \t]=", m.group("prefix"))):
                secretish = bool(_PASSWORD_NAME.search(name)) or "secret" in name.lower()
                if secretish and _is_passphrase(words):
                    end += len(tail)
                    value = line[m.start("value"):end]
                elif value.isalpha() or len(value) < 6:
                    continue  # a description ("Set this to the value of ...")
        if not _is_literal_secret(name, value):
            continue
        counts["assigned_secret"] += 1
        q = value[0] if quoted else ""
        out.append(line[pos:m.start("value")])
        out.append(f"{q}<REDACTED:assigned_secret>{q}")
        pos = end
    if not out:
        return line
    out.append(line[pos:])
    return "".join(out)


def _credential_like(v: str, *, strict: bool) -> bool:
    """A token value rather than a word (`Bearer token`), a type (`Bearer JWT`) or a placeholder."""
    if _is_reference(v) or "<REDACTED:" in v or v.lower() in _STRUCTURAL:
        return False
    if re.fullmatch(r"[a-z]+(?:[_-][a-z]+)*|[A-Z]+(?:_[A-Z]+)*", v):
        return False  # a word or an identifier (`access_token`, `YOUR_TOKEN`, `ACCESS_TOKEN`)
    has_digit = any(c.isdigit() for c in v)
    if strict:
        return len(v) >= 16 and has_digit and any(c.isalpha() for c in v)
    if len(v) < 8:
        return False
    if has_digit or re.search(r"[+/=._~-]", v):
        return True
    try:  # Basic dXNlcjpwYXNz: base64 of user:password
        return b":" in base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
    except (binascii.Error, ValueError):
        return len(v) >= 20  # long mixed-case run: a token


def _sub_value(pattern: re.Pattern[str], line: str, kind: str | Callable[[re.Match[str]], str],
               keep: Callable[[re.Match[str]], bool], counts: Counter[str]) -> str:
    """Replace group `value` of each match that `keep` accepts."""
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(line):
        if not keep(m):
            continue
        k = kind(m) if callable(kind) else kind
        value = m.group("value")
        q = value[0] if value[:1] in "\"'" and len(value) > 1 and value[-1] == value[0] else ""
        out.append(line[pos:m.start("value")])
        out.append(f"{q}<REDACTED:{k}>{q}")
        pos = m.end("value")
        counts[k] += 1
    if not out:
        return line
    out.append(line[pos:])
    return "".join(out)


def _aws_cli_kind(m: re.Match[str]) -> str:
    return m.group("key").lower()


def _cli_value_ok(m: re.Match[str]) -> bool:
    v = _strip_quotes(m.group("value"))
    return bool(v) and "<REDACTED:" not in v and not _is_reference(v) and not v.startswith("-")


def _own_rules(line: str, counts: Counter[str]) -> str:
    for kind, pattern in _CLI_RULES:
        if pattern.search(line):
            line = _sub_value(pattern, line, _aws_cli_kind if kind == "aws_cli" else kind, _cli_value_ok, counts)
    if "uthorization" in line or "UTHORIZATION" in line:
        line = _sub_value(_AUTH_HEADER, line, "authorization_header",
                          lambda m: _credential_like(m.group("value"), strict=not m.group("scheme")), counts)
    if "earer" in line or "EARER" in line:
        line = _sub_value(_BEARER, line, "bearer_token",
                          lambda m: _credential_like(m.group("value"), strict=True), counts)
    return _assignments(line, counts)


def _line_spans(text: str, pattern: re.Pattern[str]) -> Iterable[tuple[int, int]]:
    """(start, end) of each line holding a match of `pattern`, once per line, in order."""
    end = -1
    for m in pattern.finditer(text):
        if m.start() < end:
            continue
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        yield start, end


def scrub(text: str, counts: Counter[str] | None = None) -> str:
    """Replace credentials in `text`; add what was found to `counts` (kind -> n)."""
    counts = counts if counts is not None else Counter()
    if not text:
        return text
    for kind, pattern in _FORMATS:
        text, n = pattern.subn(f"<REDACTED:{kind}>", text)
        if n:
            counts[kind] += n

    # which line rules apply to which lines: {line start: (line end, [plugins])}; None = our rules
    lower = text.lower()
    if len(lower) != len(text):  # (a character whose lowercase is longer: keep the offsets)
        lower = text.translate(_ASCII_LOWER)
    todo: dict[int, tuple[int, list[Plugin | None]]] = {}
    for start, end in _line_spans(lower, _LINE_TRIGGER):
        todo[start] = (end, [None])
    for plugin in PLUGINS:
        for start, end in _line_spans(lower if plugin.lowercase else text, plugin.trigger):
            rules = todo.setdefault(start, (end, []))[1]
            if not any(r is not None and r.plugin is plugin.plugin for r in rules):
                rules.append(plugin)
    if not todo:
        return text

    out: list[str] = []
    pos = 0
    for start in sorted(todo):
        end, rules = todo[start]
        line = text[start:end]
        for rule in rules:
            line = _own_rules(line, counts) if rule is None else run_plugin(rule, line, counts)
        out.append(text[pos:start])
        out.append(line)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def scrub_obj(obj: Any, counts: Counter[str]) -> Any:
    """Scrub every string inside a JSON-like structure."""
    if isinstance(obj, str):
        return scrub(obj, counts)
    if isinstance(obj, list):
        return [scrub_obj(v, counts) for v in obj]
    if isinstance(obj, dict):
        return {k: scrub_obj(v, counts) for k, v in obj.items()}
    return obj
