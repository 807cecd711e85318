"""The theory notes are live: rebuilding them must reproduce the committed files exactly.

Each note (theory_notes/NN-*.md and README.md) is run top to bottom like a notebook,
one namespace per note: every ```python block executes in order, and every generated region
(``<!-- begin: SPEC -->`` ... ``<!-- end: NAME -->``) is regenerated from the package. A
difference means the code and the notes disagree: run ``python theory_notes/build.py`` and
review the diff. See theory_notes/README.md for the mechanism.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTES_DIR = ROOT / "theory_notes"


def _load_build():
    spec = importlib.util.spec_from_file_location("theory_notes_build", NOTES_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load_build()
NOTES = build.notes()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with build.quiet_threads():
        yield


def test_there_are_notes():
    names = [p.name for p in NOTES]
    assert len([n for n in names if n[:2].isdigit()]) == 12, names
    assert "README.md" in names


# --------------------------------------------------------------------------- references

REFERENCES = NOTES_DIR / "references.md"
ARXIV_ID = re.compile(r"(?<![\d.])(\d{4}\.\d{4,5})(?![\d.])")
# the papers the issue asks the bibliography to hold, by arXiv id (TP1-TP6, TP4b, Everett et al.,
# the spectral condition, u-muP, CompleteP), written out here from the papers' arXiv pages
REQUIRED_PAPERS = {"TP1": "1910.12478", "TP2": "2006.14548", "TP3": "2009.10685",
                   "TP4": "2011.14522", "TP4b": "2308.01814", "TP5": "2203.03466",
                   "TP6": "2310.02244", "Everett et al. 2024": "2407.05872",
                   "spectral condition": "2310.17813", "u-muP": "2407.17465",
                   "CompleteP": "2505.01618"}


def _reference_rows():
    """{short name: arXiv id} from the table of references.md."""
    rows = {}
    for line in REFERENCES.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("short name", "---"):
            found = ARXIV_ID.findall(cells[2])
            rows[cells[0]] = found[0] if found else None
    return rows


def test_references_hold_every_required_paper_with_its_arxiv_id():
    rows = _reference_rows()
    for name, arxiv in REQUIRED_PAPERS.items():
        assert rows.get(name) == arxiv, f"references.md: {name} should be arXiv {arxiv}, got {rows.get(name)}"


@pytest.mark.parametrize("note", [p for p in NOTES if p.name[:2].isdigit()], ids=lambda p: p.name)
def test_every_note_cites_the_references(note):
    assert "](references.md)" in note.read_text(), f"{note.name} does not link references.md"


def _project_texts():
    files = NOTES + [NOTES_DIR / "README.md"] + sorted((ROOT / "tensorprog").rglob("*.py"))
    return [(f, f.read_text()) for f in files]


def test_every_arxiv_id_cited_is_in_the_references():
    known = set(_reference_rows().values())
    for path, text in _project_texts():
        for arxiv in ARXIV_ID.findall(text):
            if "arxiv" in text.lower():
                assert arxiv in known, f"{path.relative_to(ROOT)} cites arXiv {arxiv}, not in references.md"


OUTSIDE = "/".join(("..", "shared"))  # the sheet the project was written from; users lack it


@pytest.mark.parametrize("phrase", ["facts sheet", "tutorial draft", OUTSIDE[3:] + "/reference",
                                    OUTSIDE, "/work/"])
def test_no_reference_points_outside_the_repository(phrase):
    for path, text in _project_texts():
        assert phrase not in text.lower(), f"{path.relative_to(ROOT)} mentions {phrase!r}"


MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("note", NOTES + [NOTES_DIR / "README.md", REFERENCES], ids=lambda p: p.name)
def test_relative_links_resolve_inside_the_repository(note):
    for target in MD_LINK.findall(note.read_text()):
        if "://" in target:
            continue
        resolved = (note.parent / target).resolve()
        assert resolved.exists(), f"{note.name} links {target}, which does not exist"
        assert ROOT in resolved.parents, f"{note.name} links {target}, outside the repository"


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_note_is_current(note):
    committed = note.read_text()
    run = build.render(note, figures=False, text=committed)
    assert run.text == committed, (
        f"{note.name} is stale: its code or the package changed and the generated regions no "
        f"longer match. {build.BUILD_HINT}.\n{build.diff(committed, run.text, note.name)}")
    for fig in run.figures:
        assert fig.exists(), f"{note.name} links {fig.name}, which is missing: {build.BUILD_HINT}"
        assert fig.stat().st_size <= build.FIGURE_LIMIT_BYTES, f"{fig.name} is over 200 KB"


@pytest.mark.parametrize("note", [p for p in NOTES if p.name[:2].isdigit()], ids=lambda p: p.name)
def test_note_ends_with_what_to_run(note):
    text = note.read_text()
    assert "## What to run" in text
    assert build.python_blocks(text, note.name) or build.bash_commands(text, note.name)


def _commands():
    out = []
    for note in NOTES:
        for line, cmd in build.bash_commands(note.read_text(), note.name):
            out.append(pytest.param(cmd, id=f"{note.name}:{line}"))
    return out


@pytest.mark.parametrize("cmd", _commands())
def test_shell_commands_in_notes_parse(cmd):
    """`tensorprog ...` lines must parse with the real CLI; `python FILE` lines name a file;
    `pip install` and `python -m` (the README's set-up and test commands) pass through."""
    for part in cmd.split("&&"):
        _check_command(part.strip(), cmd)


def _check_command(part, cmd):
    argv = shlex.split(part)
    if argv[0] == "pip" or argv[:2] == ["python", "-m"]:
        return
    if argv[0] == "tensorprog":
        from tensorprog.cli import build_parser

        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                build_parser().parse_args(argv[1:])
        except SystemExit as e:
            pytest.fail(f"`{cmd}` does not parse (exit {e.code}): {err.getvalue().strip()}")
    elif argv[0] == "python":
        assert (ROOT / argv[1]).is_file(), f"`{cmd}`: no file {argv[1]}"
    else:
        pytest.fail(f"unexpected shell command in a note: {cmd}")


# --------------------------------------------------------------------------- the mechanism


def _render(tmp_path, text, name="00-test.md"):
    path = tmp_path / name
    path.write_text(text)
    return build.render(path).text


def test_output_region_gets_the_stdout_of_the_block_above(tmp_path):
    text = "x\n\n```python\nv = 6 * 7\nprint(v)\n```\n\n<!-- begin: output -->\nold\n<!-- end: output -->\nend\n"
    out = _render(tmp_path, text)
    assert "<!-- begin: output -->\n```text\n42\n```\n<!-- end: output -->\nend\n" in out
    assert out.startswith("x\n\n```python\nv = 6 * 7\n")


def test_blocks_share_one_namespace_and_values_go_inline(tmp_path):
    text = ("```python\nv = 2\n```\n\n```python\nw = v + 1\n```\n"
            "w is <!-- begin: value w * 10 -->?<!-- end: value --> here.\n")
    assert _render(tmp_path, text).endswith(
        "w is <!-- begin: value w * 10 -->30<!-- end: value --> here.\n")


def test_namespaces_are_fresh_per_note(tmp_path):
    _render(tmp_path, "```python\nleak = 1\n```\n", "00-a.md")
    with pytest.raises(build.NoteError, match="NameError"):
        _render(tmp_path, "```python\nprint(leak)\n```\n", "00-b.md")


def test_generator_region_is_package_output(tmp_path):
    out = _render(tmp_path, "<!-- begin: presets sgd -->\n<!-- end: presets -->\n")
    assert "| muP | 2 | -1/2, 0, 1/2 | 1/2, 1/2, 1/2 | 0 | 0, 0 | 0 | yes | yes | feature learning |" in out


def test_rendering_is_idempotent(tmp_path):
    text = "```python\nprint('a')\n```\n<!-- begin: output -->\n<!-- end: output -->\n"
    once = _render(tmp_path, text)
    assert _render(tmp_path, once) == once


def test_markers_inside_code_blocks_are_left_alone(tmp_path):
    text = "```text\n<!-- begin: output -->\nliteral\n<!-- end: output -->\n```\n"
    assert _render(tmp_path, text) == text


def test_a_failing_block_names_the_note_and_line(tmp_path):
    with pytest.raises(build.NoteError, match=r"00-test\.md: the python block at line 3 raised ZeroDivisionError"):
        _render(tmp_path, "intro\n\n```python\n1 / 0\n```\n")


@pytest.mark.parametrize("text, message", [
    ("<!-- begin: nosuch -->\n<!-- end: nosuch -->\n", "unknown region kind 'nosuch'"),
    ("<!-- begin: output -->\n<!-- end: presets -->\n", "closed by 'end: presets'"),
    ("<!-- begin: output -->\n<!-- end: output -->\n", "needs a python block before it"),
    ("text <!-- end: output -->\n", "unmatched region marker"),
])
def test_bad_regions_are_clear_errors(tmp_path, text, message):
    with pytest.raises(build.NoteError, match=message):
        _render(tmp_path, text)


def test_check_mode_reports_a_stale_note(tmp_path, capsys):
    path = tmp_path / "00-stale.md"
    path.write_text("```python\nprint(1)\n```\n<!-- begin: output -->\n```text\n2\n```\n<!-- end: output -->\n")
    assert build.main([str(path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "-2" in err and "+1" in err and "build.py" in err
    assert "2" in path.read_text()  # --check writes nothing
    assert build.main([str(path), "--no-figures"]) == 0
    assert build.main([str(path), "--check"]) == 0


# --------------------------------------------------------------------------- README's first screen

README = ROOT / "README.md"


def _first_screen():
    """(first bash block, the region right after it) of README.md, both before the first '## '."""
    segments = build.parse(README.read_text(), "README.md")
    first_heading = next(s.line for s in segments if s.kind == "text" and "\n## " in s.raw)
    code = next(s for s in segments if s.kind == "code" and s.lang == "bash")
    after = segments[segments.index(code) + 1:]
    region = next(s for s in after if s.kind == "region")
    assert region.line < first_heading, "the first command's output must be on the first screen"
    return code, region


def test_readme_first_command_installs_only_the_package_and_runs_tensorprog():
    code, _ = _first_screen()
    first = code.source.splitlines()[0]
    parts = [p.strip() for p in first.split("&&")]
    assert parts[-1].startswith("tensorprog "), first
    for part in parts[:-1]:
        assert part.startswith("pip install") and "[" not in part, (
            f"the first command installs an optional extra: {part!r}; put extras on their own line")


def test_readme_shows_what_the_first_command_prints():
    """The region under the two commands is the first command's output: run the CLI (in-process,
    the function the `tensorprog` script calls) with the command's arguments and compare."""
    from tensorprog.cli import main

    code, region = _first_screen()
    argv = shlex.split(code.source.splitlines()[0].split("&&")[-1])[1:]
    assert region.spec.split() == ["cli", *argv], "the region under the commands is not their output"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    shown = region.body.strip().strip("`").removeprefix("text").strip().splitlines()
    assert shown[0] == "$ tensorprog " + " ".join(argv)
    assert shown[1:] == out.getvalue().rstrip("\n").splitlines()
