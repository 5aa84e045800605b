"""Model evaluation beyond the loss: can the model write its domain's documents?

Format validity is the share of sampled generations that the domain's own curator accepts as a
document: an OpenAPI description that validates, a NodeSet2 XML, a CI pipeline that passes the
GitLab CI / GitHub Actions lint. The curators are the ones that gate the training corpus, so
"valid" means exactly what it means for the data the model learned from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ossa_assets.lib.domains import REGISTRY

# The file name a generation is judged under: the curators dispatch on the suffix and path.
_GENERATED_NAME = {d.name: d.judge_name for d in REGISTRY}


def _judge_name(domain: str, text: str) -> str:
    if domain == "devops_workflow" and "\non:" in f"\n{text}" and "jobs:" in text:
        return ".github/workflows/generated.yml"
    if domain == "api_spec" and text.lstrip().startswith("{"):
        return "generated/openapi.json"
    return _GENERATED_NAME[domain]


def is_valid_document(domain: str, text: str) -> tuple[bool, str]:
    """(valid, reason) of one generated text, judged by the domain's curator."""
    from ossa_assets.lib.curation.common import Limits, SourceContext
    from ossa_assets.lib.curation.pipeline import CURATORS, _load

    name = _judge_name(domain, text)
    raw = text.encode("utf-8")
    ctx = SourceContext([name], lambda _p: raw, Limits())
    outcome = _load(CURATORS[domain])(name, raw, ctx)
    if outcome.status == "document":
        return True, "valid"
    return False, outcome.reason


@dataclass
class FormatValidity:
    rate: float
    samples: int
    reasons: dict[str, int] = field(default_factory=dict)
    example: str = ""


def format_validity(
    model, tokenizer, domain: str, *, samples: int, max_new_tokens: int, seed: int = 0,
    temperature: float = 0.8,
) -> FormatValidity:
    """Sample `samples` documents from the domain prompt and judge each with the curator."""
    import torch

    from ossa_assets.lib.modeling import DOMAIN_TOKENS

    if samples <= 0:
        return FormatValidity(float("nan"), 0)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    prompt = tokenizer.convert_tokens_to_ids(DOMAIN_TOKENS[domain])
    ids = torch.tensor([[prompt]] * samples, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=temperature,
            top_p=0.95,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if was_training:
        model.train()
    reasons: dict[str, int] = {}
    valid = 0
    texts = tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)
    for text in texts:
        ok, reason = is_valid_document(domain, text)
        valid += ok
        reasons[reason] = reasons.get(reason, 0) + 1
    return FormatValidity(valid / samples, samples, dict(sorted(reasons.items())), texts[0][:500])


def loss_curve_svg(losses: list[float], title: str, width: int = 480, height: int = 240) -> str:
    """A loss-per-step line chart as a standalone SVG (no plotting library needed)."""
    from html import escape

    pad = 36
    if not losses:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                f'<text x="10" y="20">{escape(title)}: no steps logged</text></svg>')
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    n = max(len(losses) - 1, 1)
    pts = " ".join(
        f"{pad + (width - 2 * pad) * i / n:.1f},{height - pad - (height - 2 * pad) * (v - lo) / span:.1f}"
        for i, v in enumerate(losses)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11"><rect width="100%" height="100%" fill="white"/>'
        f'<text x="{pad}" y="16">{escape(title)}</text>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>'
        f'<text x="2" y="{pad + 4}">{hi:.2f}</text><text x="2" y="{height - pad}">{lo:.2f}</text>'
        f'<text x="{width - pad - 30}" y="{height - pad + 16}">step {len(losses)}</text>'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{pts}"/></svg>'
    )

