"""Instruction/response pairs and the Gemma chat template, for supervised fine-tuning (SFT) of a causal LM.

Sources:

* ``generated``: instruction/response pairs the study writes from templates (``embedded``);
* ``stdlib``: real pairs from the Python standard library (``local``): every public module-level function that has
  a docstring of at least ``min_doc_chars`` characters and a body of at most ``max_source_lines`` lines gives one
  pair; the instruction asks for a function with its signature and docstring, the response is the function's
  source without the docstring. Test files are left out as in :mod:`fedpeft.data.code_corpus`;
* ``dolly``: ``databricks/databricks-dolly-15k`` from the hub (``paper``; internet).

Every pair is rendered with Gemma's chat template: the user turn holds the instruction, followed by the context
after a blank line when there is one; the assistant turn (Gemma's role name ``model``) holds the response.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from pathlib import Path

from fedpeft.data.code_corpus import is_test_or_foreign, stdlib_root

#: google/gemma-2-2b's chat template (tokenizer_config.json), so tokenizers without it render the same text.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


@dataclass(frozen=True)
class Pair:
    instruction: str
    context: str
    response: str


def messages(pair: Pair) -> list[dict[str, str]]:
    user = pair.instruction if not pair.context else f"{pair.instruction}\n\n{pair.context}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": pair.response}]


def render(pair: Pair, tokenizer) -> str:
    """The pair as Gemma-chat text (the tokenizer's own template if it is Gemma's, else the copy above)."""
    template = getattr(tokenizer, "chat_template", None) or GEMMA_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(messages(pair), chat_template=template, tokenize=False)


def stdlib_pairs(min_doc_chars: int = 40, max_source_lines: int = 40, root: Path | None = None) -> list[Pair]:
    """Pairs from the standard library's documented public functions (see the module docstring), sorted by
    file and line, so the list is the same on every machine with the same Python."""
    root = Path(root) if root is not None else stdlib_root()
    pairs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if is_test_or_foreign(rel):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:  # a few files are templates or Python 2 (lib2to3 fixtures)
            continue
        lines = text.splitlines()
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < min_doc_chars or node.end_lineno - node.lineno + 1 > max_source_lines:
                continue
            body = node.body[1:]
            if not body:
                continue
            header = lines[node.lineno - 1 : node.body[0].lineno - 1]
            source = "\n".join(header + lines[body[0].lineno - 1 : node.end_lineno])
            signature = f"{node.name}({ast.unparse(node.args)})"
            module = rel.with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
            pairs.append(Pair(f"Write the Python function `{signature}` of the module `{module}`.", doc, source))
    return pairs


def generated_pairs(count: int, seed: int = 0) -> list[Pair]:
    """Template-made arithmetic and string tasks with their exact answers."""
    rng = random.Random(seed)
    words = ["river", "stone", "garden", "window", "letter", "candle", "forest", "signal", "bridge", "harbor"]
    pairs = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randrange(100), rng.randrange(100)
            pairs.append(Pair(f"Add {a} and {b}.", "", f"{a} + {b} = {a + b}."))
        elif kind == 1:
            w = rng.choice(words)
            pairs.append(Pair("Reverse the word.", w, f"The reversed word is {w[::-1]}."))
        else:
            chosen = rng.sample(words, 3)
            pairs.append(Pair("Sort these words alphabetically.", ", ".join(chosen), ", ".join(sorted(chosen)) + "."))
    return pairs


def dolly_pairs() -> list[Pair]:  # pragma: no cover - needs internet
    from datasets import load_dataset

    table = load_dataset("databricks/databricks-dolly-15k", split="train")
    return [Pair(r["instruction"], r["context"], r["response"]) for r in table]


def split_pairs(pairs: list[Pair], eval_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Shuffle with ``seed`` and hold out ``eval_fraction`` (the seed's 99/1 split is 0.01)."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction = {eval_fraction!r} is not allowed; it must be in (0, 1)")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_fraction * len(pairs)))
    if n_eval >= len(pairs):
        raise ValueError(f"eval_fraction = {eval_fraction} of {len(pairs)} pairs leaves nothing to train on")
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


def tokenize_pairs(pairs: list[Pair], tokenizer, max_length: int) -> list:
    """Token ids of each rendered pair, truncated to ``max_length`` (as SFTTrainer's ``max_seq_length``)."""
    import torch

    out = []
    for pair in pairs:
        ids = tokenizer(render(pair, tokenizer), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        out.append(torch.tensor(ids, dtype=torch.long))
    return out
