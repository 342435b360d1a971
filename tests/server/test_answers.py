from tracemark.plugins.answers import answers_match, extract_final_answer, normalize_answer


def test_boxed_wins_and_nested_braces():
    assert extract_final_answer(r"so 3 + 4 = 7, \boxed{\frac{1}{2}} and 9") == r"\frac{1}{2}"


def test_hashes_then_last_number():
    assert extract_final_answer("a 12\nb 13\n#### 1,234") == "1,234"
    assert extract_final_answer("it costs 5 then 17 dollars") == "17"
    assert extract_final_answer("no digits here") is None


def test_normalisation():
    assert normalize_answer("$1,200.00") == "1200"
    assert normalize_answer("answer = 8") == "8"
    assert normalize_answer(r"\text{ apples } 0.50") == "0.5"
    assert answers_match("1,000", "1000.0")
    assert not answers_match("10", "100")
    assert not answers_match(None, None)
