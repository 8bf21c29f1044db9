"""Dotted field paths (``extract_field`` / ``assign_field``): what each kind of container answers to.

These pin down the rules of ``talkpipe_async._core._fields`` that the mutation run found unchecked: which lookup
a container gets (a mapping only by key, a sequence only by integer index, anything else by attribute), what a
missing part raises and says, and where ``assign_field`` writes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from talkpipe_async import assign_field, extract_field


def test_none_and_underscore_are_the_item_itself() -> None:
    item = {"a": 1}
    assert extract_field(item, None) is item
    assert extract_field(item, "_") is item
    assert extract_field({"a": {"b": 2}}, "a._.b") == 2  # "_" inside a path keeps the value reached so far
    assert extract_field({"a": {"b": 2}}, "_.a.b") == 2


def test_a_mapping_is_read_by_key_only() -> None:
    assert extract_field({"a": {"b": [10, 20]}}, "a.b.1") == 20
    with pytest.raises(KeyError) as caught:
        extract_field({"a": 1}, "keys")  # a dict has a .keys attribute: a mapping is never read by attribute
    assert caught.value.args[0] == "field 'keys': no 'keys' in dict"


def test_a_sequence_is_read_by_integer_index_only() -> None:
    assert extract_field({"xs": [1, 2, 3]}, "xs.0") == 1
    assert extract_field({"xs": (1, 2, 3)}, "xs.-1") == 3
    with pytest.raises(KeyError) as caught:
        extract_field([1, 2], "count")  # a list has a .count attribute: a sequence is read by index only
    assert caught.value.args[0] == "field 'count': no 'count' in list"
    with pytest.raises(IndexError):
        extract_field([1, 2], "5")
    with pytest.raises(KeyError, match="no 'X1' in list"):
        extract_field([1, 2], "X1")  # only a whole integer (with its sign) is an index


def test_strings_and_bytes_are_not_indexed() -> None:
    for text in ("abc", b"abc"):
        with pytest.raises(KeyError) as caught:
            extract_field({"t": text}, "t.0")
        assert caught.value.args[0] == f"field 't.0': no '0' in {type(text).__name__}"
    assert extract_field("abc", "upper")() == "ABC"  # other parts are attributes, as for any object


def test_other_objects_are_read_by_attribute() -> None:
    item = SimpleNamespace(user=SimpleNamespace(name="ada"))
    assert extract_field(item, "user.name") == "ada"
    with pytest.raises(KeyError) as caught:
        extract_field(item, "user.age")
    assert caught.value.args[0] == "field 'user.age': no 'age' in SimpleNamespace"


def test_a_falsy_value_is_found_not_missing() -> None:
    assert extract_field({"a": 0}, "a") == 0
    assert extract_field({"a": None}, "a") is None
    assert extract_field(SimpleNamespace(a=""), "a") == ""


def test_assign_sets_a_key_an_index_or_an_attribute_at_the_end_of_the_path() -> None:
    item: dict[str, Any] = {"a": {"b": {"c": 1}}, "xs": [1, 2, 3], "obj": SimpleNamespace(v=1)}
    assign_field(item, "a.b.c", 5)
    assign_field(item, "xs.0", 10)
    assign_field(item, "xs.-1", 30)
    assign_field(item, "obj.v", 2)
    assign_field(item, "new", "n")
    assert item == {"a": {"b": {"c": 5}}, "xs": [10, 2, 30], "obj": SimpleNamespace(v=2), "new": "n"}
    assert set(item["a"]) == {"b"} and set(item["a"]["b"]) == {"c"}  # nothing written at the wrong level


def test_assign_on_an_object_and_through_underscore() -> None:
    obj = SimpleNamespace(inner={"k": 1})
    assign_field(obj, "inner.k", 2)
    assign_field(obj, "top", 3)
    assign_field(obj, "_.other", 4)
    assert obj.inner == {"k": 2} and obj.top == 3 and obj.other == 4


def test_an_attribute_may_have_a_digit_name() -> None:
    obj = SimpleNamespace()
    assign_field(obj, "0", "zero")  # not a list: the last part is an attribute name, whatever it looks like
    assert extract_field(obj, "0") == "zero"


def test_assign_to_a_list_by_name_or_to_a_tuple_fails_loudly() -> None:
    with pytest.raises(AttributeError):
        assign_field({"xs": [1]}, "xs.name", 1)
    with pytest.raises(AttributeError):
        assign_field({"xs": [1]}, "xs.X1", 1)  # only a whole integer names a list element
    with pytest.raises((AttributeError, TypeError)):
        assign_field({"t": (1, 2)}, "t.0", 9)
    with pytest.raises(KeyError):
        assign_field({"a": {}}, "a.b.c", 1)  # the path up to the last part must exist
