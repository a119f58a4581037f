"""The trainer's modules import downwards only, and the model, batching, loss and search load
without sentencepiece (the special token ids live in a module with no imports)."""
import ast
import subprocess
import sys
from pathlib import Path

NMT = Path(__file__).resolve().parents[2] / "l2fast" / "nmt"
# Entry points: what each may be imported by (nothing else may import them).
UPPER = {"cli": set(), "ablation": {"cli"}, "bench": {"cli"}, "train": {"cli", "ablation"}}


def nmt_imports(module: Path) -> set[str]:
    """The l2fast.nmt modules a module imports, at any depth of its code (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("l2fast.nmt."):
            found.add(node.module.split(".")[2])
    return found


def test_no_module_imports_an_upper_one():
    wrong = [(module.stem, imported) for module in NMT.glob("*.py") for imported in nmt_imports(module)
             if imported in UPPER and module.stem not in UPPER[imported]]
    assert not wrong, wrong


def test_special_tokens_has_no_imports():
    assert not [n for n in ast.walk(ast.parse((NMT.parent / "trainer" / "special_tokens.py").read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_model_data_loss_and_search_import_without_sentencepiece():
    code = ("import sys; sys.modules['sentencepiece'] = None\n"  # makes `import sentencepiece` fail
            "import l2fast.nmt.model, l2fast.nmt.data, l2fast.nmt.loss, l2fast.nmt.search")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=NMT.parent.parent)
    assert proc.returncode == 0, proc.stderr
