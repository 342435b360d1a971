"""The classic scenario templates of :mod:`tracemark.foundation.problems` (shopping, rates, ages, ...).

Each template is ``(rng, k, difficulty) -> _Draft``: a question and ``k`` steps ``(sentence with {c},
expression, result)``. The random draws of these eight are pinned: the generated problems (and the demo
built on them) must not change for a given seed, so edit them only by adding new templates elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracemark.foundation.problems import Difficulty

__all__ = ["CLASSIC", "Draft", "Template"]

_PEOPLE = [
    ("Ava", "she"),
    ("Ben", "he"),
    ("Chloe", "she"),
    ("Daniel", "he"),
    ("Emma", "she"),
    ("Felix", "he"),
    ("Grace", "she"),
    ("Hugo", "he"),
    ("Iris", "she"),
    ("Jack", "he"),
    ("Kara", "she"),
    ("Liam", "he"),
    ("Maya", "she"),
    ("Noah", "he"),
    ("Olivia", "she"),
    ("Omar", "he"),
    ("Priya", "she"),
    ("Raj", "he"),
    ("Sofia", "she"),
    ("Tom", "he"),
    ("Uma", "she"),
    ("Victor", "he"),
    ("Wendy", "she"),
    ("Yusuf", "he"),
]
_ITEMS = [
    "apples",
    "notebooks",
    "pencils",
    "cupcakes",
    "oranges",
    "stickers",
    "candles",
    "mugs",
    "bracelets",
    "comic books",
    "tennis balls",
    "flowers",
    "toy cars",
    "bottles of juice",
]
_MAKERS = [
    ("bakery", "loaves of bread"),
    ("factory", "toys"),
    ("printer", "pages"),
    ("farm", "eggs"),
    ("workshop", "chairs"),
    ("kitchen", "sandwiches"),
    ("machine", "bottles"),
]
_SHARED = ["stickers", "cookies", "marbles", "cards", "candies", "beads", "stamps"]
_PURCHASES = ["video game", "jacket", "bike helmet", "board game", "pair of shoes", "backpack"]
_VEHICLES = ["train", "car", "bus", "truck", "cyclist"]
_PLANTS = ["tomato plants", "rose bushes", "cabbages", "sunflowers", "pepper plants", "lettuces"]
_RELATIVES = ["brother", "sister", "cousin", "uncle", "aunt", "grandmother", "grandfather"]


@dataclass
class _Draft:
    question: str
    steps: list[tuple[str, str, int]]  # (sentence with {c}, expression, result)
    answer: int


def _r(rng: random.Random, bounds: tuple[int, int]) -> int:
    return rng.randint(bounds[0], bounds[1])


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _bill_above(amount: int) -> int:
    for bill in (5, 10, 20, 50, 100, 200, 500, 1000):
        if bill > amount:
            return bill
    return (amount // 1000 + 1) * 1000


def _shopping(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    item1, item2 = rng.sample(_ITEMS, 2)
    a, p = _r(rng, d.small), _r(rng, d.price)
    cost1 = a * p
    s1 = (f"{name} spends {{c}} dollars on {item1}.", f"{a}*{p}", cost1)
    if k in (1, 2):
        q = f"{name} buys {a} {item1} at ${p} each."
        if k == 1:
            return _Draft(q + f" How many dollars does {name} spend?", [s1], cost1)
        bill = _bill_above(cost1)
        q += f" {_cap(pro)} pays with a ${bill} bill. How many dollars of change does {pro} get?"
        return _Draft(
            q,
            [s1, (f"{_cap(pro)} gets {{c}} dollars of change.", f"{bill}-{cost1}", bill - cost1)],
            bill - cost1,
        )
    b, p2 = _r(rng, d.small), _r(rng, d.price)
    cost2 = b * p2
    total = cost1 + cost2
    steps = [
        s1,
        (f"{_cap(pro)} spends {{c}} dollars on {item2}.", f"{b}*{p2}", cost2),
        (f"In total {pro} spends {{c}} dollars.", f"{cost1}+{cost2}", total),
    ]
    q = f"{name} buys {a} {item1} at ${p} each and {b} {item2} at ${p2} each."
    if k == 3:
        return _Draft(q + f" How many dollars does {name} spend in total?", steps, total)
    bill = _bill_above(total)
    steps.append((f"{_cap(pro)} gets {{c}} dollars of change.", f"{bill}-{total}", bill - total))
    q += f" {_cap(pro)} pays with a ${bill} bill. How many dollars of change does {pro} get?"
    return _Draft(q, steps, bill - total)


def _rates(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    place, things = rng.choice(_MAKERS)
    r, h = _r(rng, d.price), _r(rng, d.small)
    daily = r * h
    steps = [(f"The {place} makes {{c}} {things} a day.", f"{r}*{h}", daily)]
    q = f"A {place} makes {r} {things} every hour and works {h} hours a day."
    if k == 1:
        return _Draft(q + f" How many {things} does it make in a day?", steps, daily)
    days = _r(rng, d.small)
    total = daily * days
    steps.append((f"In {days} days it makes {{c}} {things}.", f"{daily}*{days}", total))
    if k == 2:
        return _Draft(q + f" How many {things} does it make in {days} days?", steps, total)
    if k == 3:
        sold = rng.randint(1, total - 1)
        steps.append((f"{_cap(things)} left: {{c}}.", f"{total}-{sold}", total - sold))
        q += f" After {days} days, it has sold {sold} of the {things}. How many {things} are left?"
        return _Draft(q, steps, total - sold)
    m = rng.randint(2, min(d.small[1], total - 1))
    boxes = rng.randint(1, (total - 1) // m)
    left = m * boxes
    sold = total - left
    steps.append((f"After selling, {{c}} {things} are left.", f"{total}-{sold}", left))
    steps.append(("They fill {c} boxes.", f"{left}/{m}", boxes))
    q += (
        f" After {days} days, it has sold {sold} of the {things} and packs the rest into boxes of {m}."
        " How many boxes does it fill?"
    )
    return _Draft(q, steps, boxes)


def _ages(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    (n1, _), (n2, _), (n3, _), (n4, _) = rng.sample(_PEOPLE, 4)
    a = _r(rng, (max(5, d.big[0] // 2), max(6, d.big[1] // 2)))
    diff = _r(rng, d.small)
    b = a + diff
    steps = [(f"{n2} is {{c}} years old.", f"{a}+{diff}", b)]
    q = f"{n1} is {a} years old. {n2} is {diff} years older than {n1}."
    if k == 1:
        return _Draft(q + f" How old is {n2}?", steps, b)
    mult = rng.choice((2, 3)) if d.max_steps >= 3 else 2
    c = b * mult
    word = {2: "twice", 3: "three times"}[mult]
    steps.append((f"{n3} is {{c}} years old.", f"{b}*{mult}", c))
    q += f" {n3} is {word} as old as {n2}."
    if k == 2:
        return _Draft(q + f" How old is {n3}?", steps, c)
    if k == 3:
        total = a + b + c
        steps.append(("Together they are {c} years old.", f"{a}+{b}+{c}", total))
        return _Draft(q + " What is the sum of their three ages?", steps, total)
    y = rng.randint(1, c - 1)
    e = c - y
    total = a + b + c + e
    steps.append((f"{n4} is {{c}} years old.", f"{c}-{y}", e))
    steps.append(("Together they are {c} years old.", f"{a}+{b}+{c}+{e}", total))
    q += f" {n4} is {y} years younger than {n3}. What is the sum of their four ages?"
    return _Draft(q, steps, total)


def _sharing(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    thing = rng.choice(_SHARED)
    f, each = _r(rng, d.small), _r(rng, d.price)
    total = f * each
    steps: list[tuple[str, str, int]] = []
    if k == 4:
        start = rng.randint(1, total - 1)
        bought = total - start
        steps.append((f"{name} has {{c}} {thing}.", f"{start}+{bought}", total))
        q = (
            f"{name} has {start} {thing} and buys {bought} more."
            f" {_cap(pro)} shares them equally among {f} friends."
        )
    else:
        q = f"{name} has {total} {thing} and shares them equally among {f} friends."
    steps.append((f"Each friend gets {{c}} {thing}.", f"{total}/{f}", each))
    if k == 1:
        return _Draft(q + f" How many {thing} does each friend get?", steps, each)
    g = rng.randint(1, each - 1)
    left = each - g
    steps.append((f"Each friend has {{c}} {thing} left.", f"{each}-{g}", left))
    q += f" Each friend then gives away {g} {thing}."
    if k == 2:
        return _Draft(q + f" How many {thing} does each friend have left?", steps, left)
    steps.append((f"The friends have {{c}} {thing} left in total.", f"{left}*{f}", left * f))
    return _Draft(q + f" How many {thing} do the friends have left in total?", steps, left * f)


def _savings(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    thing = rng.choice(_PURCHASES)
    s, w = _r(rng, d.price), _r(rng, d.small)
    saved = s * w
    steps = [(f"{name} saves {{c}} dollars.", f"{s}*{w}", saved)]
    q = f"{name} saves ${s} every week for {w} weeks."
    if k == 1:
        return _Draft(q + f" How many dollars does {pro} save?", steps, saved)
    if k == 2:
        x = rng.randint(1, saved - 1)
        steps.append((f"{_cap(pro)} has {{c}} dollars left.", f"{saved}-{x}", saved - x))
        q += f" Then {pro} spends ${x} on a {thing}. How many dollars does {pro} have left?"
        return _Draft(q, steps, saved - x)
    gift = _r(rng, d.big)
    total = saved + gift
    steps.append((f"With the gift {pro} has {{c}} dollars.", f"{saved}+{gift}", total))
    q += f" {_cap(pro)} also gets ${gift} as a gift."
    if k == 3:
        x = rng.randint(1, total - 1)
        steps.append((f"{_cap(pro)} has {{c}} dollars left.", f"{total}-{x}", total - x))
        q += f" Then {pro} spends ${x} on a {thing}. How many dollars does {pro} have left?"
        return _Draft(q, steps, total - x)
    price = rng.randint(d.price[0], max(d.price[0], min(d.price[1], total - 1)))
    books = rng.randint(1, (total - 1) // price)
    left = price * books
    x = total - left
    steps.append((f"{_cap(pro)} has {{c}} dollars left.", f"{total}-{x}", left))
    steps.append((f"{_cap(pro)} can buy {{c}} books.", f"{left}/{price}", books))
    q += (
        f" Then {pro} spends ${x} on a {thing} and uses all the money left to buy books at ${price} each."
        f" How many books does {pro} buy?"
    )
    return _Draft(q, steps, books)


def _travel(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    vehicle = rng.choice(_VEHICLES)
    v, t = _r(rng, d.speed), _r(rng, d.small)
    d1 = v * t
    steps = [(f"First the {vehicle} covers {{c}} km.", f"{v}*{t}", d1)]
    if k == 1:
        steps[0] = (f"The {vehicle} travels {{c}} km.", f"{v}*{t}", d1)
        q = f"A {vehicle} travels at {v} km per hour for {t} hours. How many km does it travel?"
        return _Draft(q, steps, d1)
    if k == 2:
        route = d1 + _r(rng, d.big)
        steps[0] = (f"The {vehicle} travels {{c}} km.", f"{v}*{t}", d1)
        steps.append(("There are {c} km left.", f"{route}-{d1}", route - d1))
        q = (
            f"A {vehicle} must cover a route of {route} km. It travels at {v} km per hour for {t} hours."
            " How many km of the route are left?"
        )
        return _Draft(q, steps, route - d1)
    v2, t2 = _r(rng, d.speed), _r(rng, d.small)
    d2 = v2 * t2
    steps.append(("Then it covers {c} km.", f"{v2}*{t2}", d2))
    steps.append(("In total it travels {c} km.", f"{d1}+{d2}", d1 + d2))
    legs = f"travels at {v} km per hour for {t} hours, then at {v2} km per hour for {t2} hours."
    if k == 3:
        return _Draft(f"A {vehicle} {legs} How many km does it travel in total?", steps, d1 + d2)
    route = d1 + d2 + _r(rng, d.big)
    steps.append(("There are {c} km left.", f"{route}-{d1 + d2}", route - d1 - d2))
    q = f"A {vehicle} must cover a route of {route} km. It {legs} How many km of the route are left?"
    return _Draft(q, steps, route - d1 - d2)


def _garden(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    plant = rng.choice(_PLANTS)
    rows, per = _r(rng, d.small), _r(rng, d.price)
    total = rows * per
    steps = [(f"{name} plants {{c}} {plant}.", f"{rows}*{per}", total)]
    q = f"{name} plants {rows} rows of {plant} with {per} in each row."
    if k == 1:
        return _Draft(q + f" How many {plant} does {pro} plant?", steps, total)
    if k == 4:
        rows2, per2 = _r(rng, d.small), _r(rng, d.price)
        t2 = rows2 * per2
        steps.append((f"{_cap(pro)} adds {{c}} more.", f"{rows2}*{per2}", t2))
        steps.append((f"{_cap(pro)} has {{c}} {plant} in all.", f"{total}+{t2}", total + t2))
        q += f" Later {pro} plants {rows2} more rows with {per2} in each row."
        total += t2
    if k == 3:
        m = rng.randint(2, max(2, min(d.small[1], total - 1)))
        each = rng.randint(1, max(1, (total - 1) // m))
        left = m * each
        eaten = total - left
        steps.append(("{c} are left after the rabbits.", f"{total}-{eaten}", left))
        steps.append(("Each neighbour gets {c}.", f"{left}/{m}", each))
        q += (
            f" Rabbits eat {eaten} of them and {pro} gives the rest equally to {m} neighbours."
            " How many does each neighbour get?"
        )
        return _Draft(q, steps, each)
    eaten = rng.randint(1, total - 1)
    steps.append(("{c} are left after the rabbits.", f"{total}-{eaten}", total - eaten))
    return _Draft(q + f" Rabbits eat {eaten} of them. How many {plant} are left?", steps, total - eaten)


def _family(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    rel1, rel2 = rng.sample(_RELATIVES, 2)
    thing = rng.choice(_ITEMS)
    a = _r(rng, d.price)
    mult = rng.randint(2, max(2, min(5, d.small[1])))
    b = a * mult
    q = f"{name} has {a} {thing}. {name}'s {rel1} has {mult} times as many."
    steps = [(f"The {rel1} has {{c}} {thing}.", f"{a}*{mult}", b)]
    if k == 1:
        return _Draft(q + f" How many {thing} does the {rel1} have?", steps, b)
    extra = _r(rng, d.small)
    c = b + extra
    steps.append((f"The {rel2} has {{c}} {thing}.", f"{b}+{extra}", c))
    q += f" {name}'s {rel2} has {extra} more than the {rel1}."
    if k == 2:
        return _Draft(q + f" How many {thing} does the {rel2} have?", steps, c)
    total = a + b + c
    steps.append(("Together they have {c} " + thing + ".", f"{a}+{b}+{c}", total))
    if k == 3:
        return _Draft(q + f" How many {thing} do the three of them have together?", steps, total)
    lost = rng.randint(1, total - 1)
    steps.append(("{c} are left.", f"{total}-{lost}", total - lost))
    q += f" Together they lose {lost} {thing}. How many {thing} do the three of them have left?"
    return _Draft(q, steps, total - lost)


Template = Callable[[random.Random, int, "Difficulty"], "_Draft"]
Draft = _Draft

CLASSIC: dict[str, Template] = {
    "shopping": _shopping,
    "rates": _rates,
    "ages": _ages,
    "sharing": _sharing,
    "savings": _savings,
    "travel": _travel,
    "garden": _garden,
    "family": _family,
}
