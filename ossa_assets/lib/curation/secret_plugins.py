"""detect-secrets' format plugins as curation runs them: line by line, after our own rules.

Kept apart from secrets.py (our own rules and the scrub itself) so each reads on its own.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable

from detect_secrets.filters.heuristic import is_prefixed_with_dollar_sign, is_templated_secret
from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

# -- detect-secrets plugins, line by line (last: after our line rules) -------------------------
#
# Chosen: the plugins that look for a credential's own format (a provider prefix, a fixed length
# next to a provider's keyword). Left out, on purpose:
# - Base64HighEntropyString / HexHighEntropyString: they flag every random-looking quoted string;
#   over ../shared/corpora they fire ~95,000 times, on image digests, commit SHAs, checksums,
#   example hashes and ids in OpenAPI specs and CI files -- none of them secrets;
# - KeywordDetector: "a secret-sounding name, then anything" -- over the same corpora it flags
#   prose in comments ("API Key as a Secret: Save your ..."), code (`= new SecretStore(...)`,
#   `= true;`), `secrets: inherit` and `MYSQL_RANDOM_ROOT_PASSWORD: yes`; our own assignment
#   rule below covers that shape with the exceptions references and schemas need;
# - IPPublicDetector: a public IP address is not a credential (and OPC UA / OpenAPI examples are
#   full of them);
# - PrivateKeyDetector: it reports the `BEGIN ... PRIVATE KEY` header, not the key material; our
#   private_key format redacts the whole block.
#
# Plugins are instantiated directly and only their `analyze_string` is called: no global
# detect-secrets settings (not thread-safe), no verification (no network), no baseline filters.
# Each carries a trigger: a cheap regex that must match wherever the plugin's own patterns match
# (a literal prefix or keyword of theirs), searched over the whole text so that the plugin runs
# only on the few lines that could hold its secret (some of their patterns start with optional
# groups and cost a scan at every position).


class Plugin:
    __slots__ = ("kind", "plugin", "trigger", "lowercase")

    def __init__(self, kind: str | Callable[[str], str], plugin: RegexBasedDetector, trigger: str,
                 lowercase: bool = False):
        self.kind = kind if callable(kind) else (lambda _v, k=kind: k)
        self.plugin = plugin
        self.trigger = re.compile(trigger)
        self.lowercase = lowercase  # the trigger is searched in the lowercased text (for IGNORECASE patterns)


_AWS_KEY_ID = re.compile(r"(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA)[0-9A-Z]{16}")
_AWS = AWSKeyDetector()


def _aws_kind(value: str) -> str:
    return "aws_access_key_id" if _AWS_KEY_ID.fullmatch(value) else "aws_secret_access_key"


PLUGINS: list[Plugin] = [
    Plugin(_aws_kind, _AWS, r"A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA"),
    Plugin(_aws_kind, _AWS, r"aws", lowercase=True),  # its 40-character secret near "aws" (IGNORECASE)
    Plugin("artifactory_token", ArtifactoryDetector(), r"AKC|AP[\dA-F]"),
    Plugin("azure_storage_key", AzureStorageKeyDetector(), r"AccountKey="),
    Plugin("url_credentials", BasicAuthDetector(), r"://"),
    Plugin("cloudant_credentials", CloudantDetector(),
            r"cl(?:oudant|ou)?[-_]?(?:api)?(?:key|pw|pass|token)|cloudant\.com", lowercase=True),
    Plugin("discord_token", DiscordBotTokenDetector(), r"\.[a-zA-Z\d_-]{6}\.[a-zA-Z\d_-]{27}"),
    Plugin("github_token", GitHubTokenDetector(), r"gh[pousr]_"),
    Plugin("gitlab_token", GitLabTokenDetector(),
            r"gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-|GR1348941"),
    Plugin("ibm_cloud_iam_key", IbmCloudIamDetector(),
            r"(?:key|pwd|pass(?:word)?|token)[\"'\]]{0,2} *(?::=|=>|::|=|:| +) *[\"']?[a-z0-9_\-]{44}", lowercase=True),
    Plugin("ibm_cos_hmac", IbmCosHmacDetector(), r"secret[-_]?(?:access)?[-_]?key", lowercase=True),
    Plugin("jwt", JwtTokenDetector(), r"eyJ"),
    Plugin("mailchimp_key", MailchimpDetector(), r"-us[0-9]"),
    Plugin("npm_token", NpmDetector(), r":_authToken="),
    Plugin("openai_key", OpenAIDetector(), r"T3BlbkFJ"),
    Plugin("pypi_token", PypiTokenDetector(), r"pypi-AgE"),
    Plugin("sendgrid_key", SendGridDetector(), r"SG\."),
    Plugin("slack_token", SlackDetector(), r"xox[abposr]-|hooks\.slack\.com", lowercase=True),
    Plugin("softlayer_credentials", SoftlayerDetector(), r"softlayer|sl[-_]?(?:api)?(?:key|pwd|pass|token)",
            lowercase=True),
    Plugin("square_oauth_secret", SquareOAuthDetector(), r"sq0csp-"),
    Plugin("stripe_key", StripeDetector(), r"k_live_"),
    Plugin("telegram_token", TelegramBotTokenDetector(), r":[0-9A-Za-z_-]{35}"),
    Plugin("twilio_key", TwilioKeyDetector(), r"(?:AC|SK)[a-z0-9]{32}"),
]


_MARKER = re.compile(r"<REDACTED:[a-z0-9_]+>")


def run_plugin(plugin: Plugin, line: str, counts: Counter[str]) -> str:
    """Redact what `plugin` finds on `line` (not inside a marker our own rules left)."""
    values = {v for v in plugin.plugin.analyze_string(line)
              if len(v) >= 4 and not is_templated_secret(v) and not is_prefixed_with_dollar_sign(v)}
    for value in sorted(values, key=len, reverse=True):
        kind = plugin.kind(value)
        taken = [m.span() for m in _MARKER.finditer(line)]

        def redact(m: re.Match[str], kind: str = kind, taken: list[tuple[int, int]] = taken) -> str:
            if any(m.start() < e and s < m.end() for s, e in taken):
                return m.group(0)  # part of one of our markers (`://<REDACTED:x>@` is user:password to BasicAuth)
            counts[kind] += 1
            return f"<REDACTED:{kind}>"

        # a JWT as detect-secrets reports it may stop before its signature: take the rest of the token
        line = re.sub(re.escape(value) + (r"[A-Za-z0-9_\-.+/=]*" if kind == "jwt" else ""), redact, line)
    return line
