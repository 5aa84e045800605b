"""Secret scrubbing: real credential shapes go, references and schemas stay."""

from collections import Counter

import pytest

from ossa_assets.lib.curation.secrets import scrub


@pytest.mark.parametrize(("text", "kind"), [
    ("aws_access_key_id = AKIAZ7Q3EXAMPLE4KEY9", "aws_access_key_id"),
    ("GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github_token"),
    ("token: glpat-abcdefghij0123456789", "gitlab_token"),
    ("slack: xoxb-1234567890-abcdefghij", "slack_token"),
    ("key: AIzaSyA1234567890abcdefghijklmnopqrstuv", "google_api_key"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7c0ffee\n-----END RSA PRIVATE KEY-----", "private_key"),
    ("DATABASE_URL: postgres://app:s3cretpw@db:5432/app", "url_credentials"),
    ("  DB_PASSWORD: hunter2hunter2", "assigned_secret"),
    ('"client_secret": "f00dbabe1234"', "assigned_secret"),
])
def test_credentials_are_redacted(text, kind):
    counts: Counter = Counter()
    out = scrub(text, counts)
    assert counts[kind] == 1 and f"<REDACTED:{kind}>" in out


@pytest.mark.parametrize("text", [
    "  DB_PASSWORD: $DB_PASSWORD",
    "  token: ${{ secrets.DEPLOY_TOKEN }}",
    "  password: ${POSTGRES_PASSWORD}",
    "password:\n  type: string\n  format: password",
    "securitySchemes:\n  api_key:\n    type: apiKey\n    name: X-API-Key\n    in: header",
    'token = os.environ.get("DIGITALOCEAN_TOKEN")',
    "secrets: inherit",
    "secret_name: gitlab-registry",
    "url: https://${USER}:${TOKEN}@example.com/repo.git",
    "access_token: <your token here>",
    "Use the access token to call the API.",
])
def test_references_schemas_and_prose_are_kept(text):
    counts: Counter = Counter()
    assert scrub(text, counts) == text and not counts
