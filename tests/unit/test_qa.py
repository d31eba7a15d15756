"""Q&A documents: reading the pairs a model writes, the prompt's language, and a Q&A segment as prompt text."""

from services.indexer.pipeline.qa import parse_pairs, qa_language, qa_messages
from shared.knowledge.models import segment_text


def test_pairs_are_read_across_lines_and_with_full_width_colons() -> None:
    reply = ("Here are the pairs.\nQ1: What is tea?\nA1: A drink.\nIt is served hot.\n\n"
             "Q2：茶是什么？\nA2：一种饮料。\nQ3: Left without an answer?\nA3:  \n")
    assert parse_pairs(reply) == [("What is tea?", "A drink.\nIt is served hot."), ("茶是什么？", "一种饮料。")]


def test_markers_inside_words_are_text_and_replies_without_pairs_give_none() -> None:
    assert parse_pairs("Q1: Where is FAQ1: the list? A1: On the site; see MQ2: too.") == [
        ("Where is FAQ1: the list?", "On the site; see MQ2: too.")]
    assert parse_pairs("I cannot help with that.") == [] and parse_pairs("") == []


def test_the_prompt_names_the_documents_language() -> None:
    assert qa_language(None) == qa_language("  ") == "English" and qa_language(" Chinese ") == "Chinese"
    system, user = qa_messages("Some text.", "Chinese")
    assert "in Chinese" in system["content"] and user == {"role": "user", "content": "Some text."}


def test_a_qa_segment_reads_as_question_and_answer() -> None:
    assert segment_text({"content": "Why?", "answer": "Because."}) == "question:Why? \nanswer:Because."
    assert segment_text({"content": "Plain text.", "answer": None}) == "Plain text."
