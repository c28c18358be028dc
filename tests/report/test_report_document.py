"""The report's blocks: a variant's docstring becomes paragraphs and bullet lists, in Markdown and in HTML."""

from pathlib import Path

from pipeline.report.document import question_blocks, to_html, to_markdown


def test_a_study_question_keeps_its_paragraphs_and_bullet_lists():
    title, blocks = question_blocks("""Does it help?

    Compared against: trial 0,
    the control. Two arms:
      * a: one thing
        that goes on;
      * b: another.
    Watch val/map.
    """)
    assert title == "Does it help?"
    assert [(b.kind, b.text, b.items) for b in blocks] == [
        ("p", "Compared against: trial 0, the control. Two arms:", []),
        ("ul", "", ["a: one thing that goes on;", "b: another."]),
        ("p", "Watch val/map.", [])]
    assert "- a: one thing that goes on;\n- b: another." in to_markdown(blocks)
    assert to_html(blocks, Path("."), "t").count("<li>") == 2
