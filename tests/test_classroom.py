"""Classroom tools: student versions hide what they must, and grading gives the right points.

Each grading runs a whole notebook in a fresh kernel, so the notebooks are graded once per
module (fixtures) and every check reads those results.
"""

import json
import re

import nbformat
import pytest

from sparse_attn_edu import classroom

SOURCES = {path.stem: path for path in sorted(classroom.ASSIGNMENTS.glob("*.ipynb"))}
NAMES = list(SOURCES)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _regions(source: str, begin: str, end: str) -> list[str]:
    """Lines strictly between `### BEGIN ...` and `### END ...` markers."""
    inside, lines = False, []
    for line in source.splitlines():
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            lines.append(line)
    return lines


def _secret_lines(nb, begin: str, end: str) -> set[str]:
    """Lines of the marked regions that appear nowhere else in the notebook.

    A line such as `return out` may also occur in given code; only lines unique to the
    regions prove, by their absence, that the regions were removed.
    """
    secret, public = set(), []
    for cell in nb.cells:
        secret.update(line.strip() for line in _regions(cell.source, begin, end))
        kept = re.sub(rf"### {begin}.*?### {end}", "", cell.source, flags=re.S)
        public.append(kept)
    public_text = "\n".join(public)
    return {line for line in secret if len(line) > 8 and line not in public_text}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    written = classroom.build(out)
    assert sorted(path.name for path in written) == sorted(f"{name}.ipynb" for name in NAMES)
    return out


@pytest.fixture(scope="module")
def student_grades(student_dir):
    return {name: classroom.grade(student_dir / f"{name}.ipynb") for name in NAMES}


def test_assignments_exist_and_follow_nbgrader_conventions():
    assert len(NAMES) >= 4, f"expected the assignment notebooks, found {NAMES}"
    exercises = 0
    for name, path in SOURCES.items():
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["sparse_attn_edu"]["assignment"] == name
        ids = [_meta(c)["grade_id"] for c in nb.cells if "grade_id" in _meta(c)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate grade_id"
        kinds = [
            "solution" if _meta(c).get("solution") else "grade" if _meta(c).get("grade") else None
            for c in nb.cells
        ]
        for cell, kind in zip(nb.cells, kinds, strict=True):
            if kind == "solution":
                assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
                assert not _meta(cell)["locked"]
            if kind == "grade":
                assert _meta(cell)["locked"] and _meta(cell)["points"] > 0
                assert "### BEGIN HIDDEN TESTS" in cell.source, f"{_meta(cell)['grade_id']}"
                assert "assert" in cell.source.split("### BEGIN HIDDEN TESTS")[0], "visible tests"
        # Every exercise is followed by its own grade cell before the next exercise.
        order = [kind for kind in kinds if kind]
        assert order == ["solution", "grade"] * (len(order) // 2), f"{name}: {order}"
        exercises += len(order) // 2
    assert exercises >= 7, f"expected at least 7 exercises, found {exercises}"


def test_student_versions_hide_solutions_and_hidden_tests(student_dir):
    for name, path in SOURCES.items():
        source = nbformat.read(path, as_version=4)
        student = nbformat.read(student_dir / f"{name}.ipynb", as_version=4)
        text = "\n".join(cell.source for cell in student.cells)
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN"):
            assert marker not in text, f"{name}: {marker!r} left in the student version"
        for begin, end in (
            ("BEGIN SOLUTION", "END SOLUTION"),
            ("BEGIN HIDDEN TESTS", "END HIDDEN"),
        ):
            secrets = _secret_lines(source, begin, end)
            assert secrets, f"{name}: no {begin} lines to look for"
            leaked = [line for line in secrets if line in text]
            assert not leaked, f"{name}: {begin} lines leaked: {leaked}"
        assert [_meta(c).get("grade_id") for c in student.cells] == [
            _meta(c).get("grade_id") for c in source.cells
        ], "the student version keeps every cell and its grade_id"
        for cell in student.cells:
            if _meta(cell).get("solution"):
                assert "raise NotImplementedError()" in cell.source
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
                assert "execution" not in cell.metadata


def test_student_versions_run_up_to_each_exercise(student_grades):
    for name, (_, executed) in student_grades.items():
        first_exercise = next(i for i, c in enumerate(executed.cells) if _meta(c).get("solution"))
        for index, cell in enumerate(executed.cells):
            errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
            if index < first_exercise:
                assert not errors, f"{name}: cell {index} before the first exercise failed"
            for error in errors:
                # The Triton interpreter wraps the exception of a kernel in InterpreterError.
                reason = f"{error.ename}: {error.evalue}"
                assert "NotImplementedError" in reason, f"{name}: cell {index} crashed: {reason}"


def test_unsolved_exercises_score_zero(student_grades):
    for name, (report, _) in student_grades.items():
        assert report.assignment == name
        assert report.cells, f"{name}: no grade cells"
        assert report.total == 0, report.table()
        assert all(cell.status == "failed" for cell in report.cells), report.table()
        assert report.max_total == sum(
            _meta(c)["points"]
            for c in nbformat.read(SOURCES[name], as_version=4).cells
            if _meta(c).get("grade")
        )


@pytest.mark.parametrize("name", NAMES)
def test_solutions_score_full_marks(name):
    report, _ = classroom.grade(SOURCES[name])
    assert report.total == report.max_total > 0, report.table()
    assert all(cell.status == "passed" for cell in report.cells), report.table()


def test_partially_solved_notebook_scores_exactly_that_exercise(student_dir, tmp_path, capsys):
    """Paste one solution back into a student notebook: it earns that exercise's points."""
    name = "a2_blocked_and_online_softmax"
    source = nbformat.read(SOURCES[name], as_version=4)
    solutions = {_meta(c)["grade_id"]: c.source for c in source.cells if _meta(c).get("solution")}
    student = nbformat.read(student_dir / f"{name}.ipynb", as_version=4)
    for cell in student.cells:
        if _meta(cell).get("grade_id") == "online_softmax_solution":
            cell.source = solutions["online_softmax_solution"]
    submission = tmp_path / "submitted.ipynb"
    nbformat.write(student, submission)

    result = tmp_path / "grade.json"
    assert classroom.main(["grade", str(submission), "--json", str(result)]) == 0
    scores = json.loads(result.read_text())
    points = {e["grade_id"]: (e["points"], e["max_points"]) for e in scores["exercises"]}
    assert points == {"gather_tests": (0.0, 3.0), "online_softmax_tests": (4.0, 4.0)}
    assert (scores["total"], scores["max_total"]) == (4.0, 7.0)
    table = capsys.readouterr().out
    assert re.search(r"online_softmax_tests\s+4 / 4", table) and re.search(r"total\s+4 / 7", table)


def test_grading_restores_tests_and_runs_hidden_ones(student_dir, tmp_path):
    """Edited tests are put back, hidden tests run, deleted tests score 0 as missing."""
    name = "a1_masks_and_softmax"
    student = nbformat.read(student_dir / f"{name}.ipynb", as_version=4)
    for cell in student.cells:
        grade_id = _meta(cell).get("grade_id")
        if grade_id == "masked_softmax_tests":
            cell.source = "pass  # a student emptied the test"
        if grade_id == "longformer_mask_solution":
            # Passes the visible tests (global token 0 only), not the hidden ones.
            cell.source = (
                "def longformer_mask(seq_len, window, global_tokens=(0,)):\n"
                "    i = torch.arange(seq_len).view(-1, 1)\n"
                "    j = torch.arange(seq_len).view(1, -1)\n"
                "    return ((i - j).abs() <= window // 2) | (i == 0) | (j == 0)\n"
            )
    student.cells = [c for c in student.cells if _meta(c).get("grade_id") != "bigbird_random_tests"]
    submission = tmp_path / "tampered.ipynb"
    nbformat.write(student, submission)

    report, executed = classroom.grade(submission)
    by_id = {cell.grade_id: cell for cell in report.cells}
    assert by_id["masked_softmax_tests"].status == "failed", report.table()
    assert "NotImplementedError" in by_id["masked_softmax_tests"].error
    assert by_id["longformer_mask_tests"].status == "failed", report.table()
    assert by_id["longformer_mask_tests"].error.startswith("AssertionError: (13, 6, (0, 12))")
    assert by_id["bigbird_random_tests"].status == "missing"
    assert report.total == 0 and report.max_total == 8
    restored = next(
        c for c in executed.cells if _meta(c).get("grade_id") == "longformer_mask_tests"
    )
    assert "### BEGIN HIDDEN TESTS" in restored.source


def test_grade_names_the_missing_instructor_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["sparse_attn_edu"] = {"assignment": "a9_not_an_assignment"}
    path = tmp_path / "a9.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(FileNotFoundError, match="a9_not_an_assignment"):
        classroom.grade(path)
