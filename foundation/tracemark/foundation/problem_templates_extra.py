"""Twelve more scenario templates for :mod:`tracemark.foundation.problems`, each with 1 to 5 steps.

They cover the kinds of reasoning GSM8K uses that the classic eight do not: percentages, unit conversion
(minutes to hours, dozens), "how many more" comparisons, multiplicative chains, integer averages, work
rates, recipe scaling, tickets, grouping into buses, temperature and weight changes. Numbers are drawn so
that every step is exact by construction (divisions divide, percentages give whole dollars, differences
stay non-negative); the question for ``k`` steps needs exactly those ``k`` steps. Besides the numbers
written in the question, steps use only the constants its words state: 2 ("twice", "half", "two-point",
"both"), 3 ("three"), 4 ("four"), 12 ("dozen"), 60 (minutes in an hour) and 100 (percent).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from tracemark.foundation.problem_templates import _PEOPLE, Template, _bill_above, _cap, _Draft, _r

if TYPE_CHECKING:
    from tracemark.foundation.problems import Difficulty

__all__ = ["EXTRA", "IMPLICIT_CONSTANTS"]

#: constants a step may use without the question writing them as digits (see the module docstring)
IMPLICIT_CONSTANTS = frozenset({2, 3, 4, 12, 60, 100})

_Steps = list[tuple[str, str, int]]

_SHOPS = [
    ("sports shop", "basketballs"),
    ("bookstore", "atlases"),
    ("toy store", "puzzles"),
    ("garden centre", "flower pots"),
    ("music shop", "guitar strings"),
    ("shoe shop", "pairs of sneakers"),
]
_PERCENTS = [(10, 10), (20, 5), (25, 4), (50, 2), (30, 10), (40, 5), (75, 4)]  # (percent, price step)
_INSTRUMENTS = ["piano", "violin", "guitar", "drums", "flute", "cello"]
_BAKES = [
    ("cookie", "cookies", "cups of flour"),
    ("muffin", "muffins", "cups of milk"),
    ("pancake", "pancakes", "cups of oats"),
    ("scone", "scones", "cups of cream"),
]
_ANIMALS = [("cows", "chickens", "ducks"), ("horses", "goats", "sheep"), ("pigs", "rabbits", "geese")]
_GAMES = ["bowling", "darts", "mini golf", "a video game", "archery"]
_CARGO = ["rice", "flour", "sugar", "potatoes", "cement"]
_VENUES = [("theatre", "play"), ("cinema", "film"), ("museum", "exhibition"), ("circus", "show")]
_DESTINATIONS = ["the science museum", "the zoo", "an aquarium", "a farm", "the planetarium"]
_TOWNS = ["Millbrook", "Ashford", "Riverton", "Fairview", "Oakdale", "Pinecrest"]


def _pick_divisor_chain(rng: random.Random, total: int, lo: int, hi: int) -> tuple[int, int]:
    """(size, count) with size*count <= total - 2, size in lo..hi, count >= 1 (needs total >= lo + 2)."""
    size = rng.randint(lo, min(hi, total - 2))
    return size, rng.randint(1, (total - 2) // size)


def _discount(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    shop, things = rng.choice(_SHOPS)
    pct, unit = rng.choice(_PERCENTS)
    price = unit * rng.randint(max(1, d.price[0] // 2), d.price[1])
    off = price * pct // 100
    sale = price - off
    steps: _Steps = [("The discount is {c} dollars.", f"{price}*{pct}/100", off)]
    q = f"A {shop} sells {things} for ${price} each. This week everything is {pct}% off."
    if k == 1:
        return _Draft(q + " How many dollars is the discount on one item?", steps, off)
    steps.append(("On sale one costs {c} dollars.", f"{price}-{off}", sale))
    if k == 2:
        return _Draft(q + " What is the sale price of one item in dollars?", steps, sale)
    name, pro = rng.choice(_PEOPLE)
    n = _r(rng, d.small)
    cost = sale * n
    steps.append((f"{name} pays {{c}} dollars for them.", f"{sale}*{n}", cost))
    q += f" {name} picks up {n} of them during the sale."
    if k == 3:
        return _Draft(q + f" How much does {name} pay, in dollars?", steps, cost)
    fee = _r(rng, d.price)
    total = cost + fee
    steps.append(("With delivery the order comes to {c} dollars.", f"{cost}+{fee}", total))
    q += f" Home delivery adds a flat ${fee}."
    if k == 4:
        return _Draft(q + " What is the total cost of the order in dollars?", steps, total)
    bill = _bill_above(total)
    steps.append((f"{name} gets back {{c}} dollars.", f"{bill}-{total}", bill - total))
    q += f" {_cap(pro)} hands the cashier ${bill}. How much change should {pro} receive?"
    return _Draft(q, steps, bill - total)


def _lessons(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    instrument = rng.choice(_INSTRUMENTS)
    days = rng.randint(2, 6)
    weeks = _r(rng, d.small)
    unit = 60 // _gcd(60, days * weeks)  # minutes per day must make the total a whole number of hours
    lo = -(-15 // unit)  # at least 15 minutes a day
    minutes = unit * rng.randint(lo, max(lo, 90 // unit))
    weekly = minutes * days
    steps: _Steps = [(f"Every week {name} plays for {{c}} minutes.", f"{minutes}*{days}", weekly)]
    q = f"{name} is learning the {instrument} and practises {minutes} minutes a day, {days} days a week."
    if k == 1:
        return _Draft(q + f" How many minutes does {pro} practise in a week?", steps, weekly)
    total = weekly * weeks
    steps.append((f"Over {weeks} weeks that is {{c}} minutes.", f"{weekly}*{weeks}", total))
    q += f" {_cap(pro)} keeps this up for {weeks} weeks."
    if k == 2:
        return _Draft(q + f" How many minutes does {pro} practise altogether?", steps, total)
    hours = total // 60
    steps.append(("That is {c} hours.", f"{total}/60", hours))
    if k == 3:
        return _Draft(q + " How many hours of practice is that?", steps, hours)
    rate = _r(rng, d.price)
    fee = hours * rate
    steps.append(("The coach charges {c} dollars.", f"{hours}*{rate}", fee))
    q += f" {_cap(pro)} pays a coach ${rate} for every hour of practice."
    if k == 4:
        return _Draft(q + " How many dollars does the coach get in those weeks?", steps, fee)
    help_ = rng.randint(1, fee - 1)
    steps.append((f"{name} pays {{c}} dollars of it.", f"{fee}-{help_}", fee - help_))
    q += f" A grandparent covers ${help_} of the fee. How many dollars does {name} pay the coach?"
    return _Draft(q, steps, fee - help_)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _bake_sale(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    dozens = _r(rng, d.small)
    baked = dozens * 12
    steps: _Steps = [(f"{name} bakes {{c}} muffins.", f"{dozens}*12", baked)]
    q = f"For the school bake sale, {name} bakes {dozens} dozen muffins."
    if k == 1:
        return _Draft(q + f" How many muffins does {pro} bake?", steps, baked)
    kept = rng.randint(1, max(1, baked // 4))
    to_sell = baked - kept
    steps.append((f"{_cap(pro)} brings {{c}} muffins to the sale.", f"{baked}-{kept}", to_sell))
    q += f" {_cap(pro)} keeps {kept} at home for the family and sells all the others."
    if k == 2:
        return _Draft(q + " How many muffins go to the sale?", steps, to_sell)
    price = rng.randint(2, max(2, d.price[1] // 3))
    takings = to_sell * price
    steps.append(("The muffins bring in {c} dollars.", f"{to_sell}*{price}", takings))
    q += f" Each muffin sells for ${price}."
    if k == 3:
        return _Draft(q + " How many dollars does the sale bring in?", steps, takings)
    helpers = rng.randint(2, max(2, min(d.small[1], takings - 1)))
    share = rng.randint(1, (takings - 1) // helpers)
    profit = helpers * share
    costs = takings - profit
    steps.append(("After the ingredients, {c} dollars are profit.", f"{takings}-{costs}", profit))
    q += f" The ingredients cost ${costs}."
    if k == 4:
        return _Draft(q + " What is the profit in dollars?", steps, profit)
    steps.append(("Each club gets {c} dollars.", f"{profit}/{helpers}", share))
    q += f" The profit is split evenly between {helpers} school clubs."
    q += " How many dollars does each club receive?"
    return _Draft(q, steps, share)


def _scores(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    (n1, pro), (n2, _) = rng.sample(_PEOPLE, 2)
    twos = _r(rng, d.small)
    p2 = twos * 2
    steps: _Steps = [(f"{n1} scores {{c}} points from two-pointers.", f"{twos}*2", p2)]
    q = f"In a basketball game, {n1} makes {twos} two-point baskets"
    if k == 1:
        return _Draft(q + f". How many points does {n1} get from them?", steps, p2)
    threes = rng.randint(1, d.small[1])
    p3 = threes * 3
    steps.append((f"{_cap(pro)} scores {{c}} points from three-pointers.", f"{threes}*3", p3))
    q += f" and {threes} three-point baskets."
    mine = p2 + p3
    if k == 2:
        steps[1] = (f"{n1} scores {{c}} points in all.", f"{p2}+{threes}*3", mine)
        return _Draft(q + f" How many points does {n1} score from these baskets?", steps, mine)
    steps.append((f"{n1} scores {{c}} points in all.", f"{p2}+{p3}", mine))
    if k == 3:
        return _Draft(q + f" How many points does {n1} score in the game?", steps, mine)
    other = rng.randint(1, mine - 1)
    if k == 4:
        steps.append((f"{n1} scores {{c}} more points than {n2}.", f"{mine}-{other}", mine - other))
        q += f" {_cap(_poss(pro))} teammate {n2} scores {other} points."
        q += f" How many more points does {n1} score than {n2}?"
        return _Draft(q, steps, mine - other)
    both = mine + other
    steps.append(("Together they score {c} points.", f"{mine}+{other}", both))
    rival = rng.randint(1, both - 1)
    steps.append(("They win by {c} points.", f"{both}-{rival}", both - rival))
    q += (
        f" {_cap(_poss(pro))} teammate {n2} scores {other} points, and those two are the team's only"
        " scorers."
        f" The other team scores {rival} points. By how many points does {n1}'s team win?"
    )
    return _Draft(q, steps, both - rival)


def _farm(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, _ = rng.choice(_PEOPLE)
    big, mid, small = rng.choice(_ANIMALS)
    a = _r(rng, d.small)
    m = rng.choice((2, 3))
    if (a * m) % 2:
        a += 1
    b = a * m
    word = {2: "twice as many", 3: "three times as many"}[m]
    steps: _Steps = [(f"There are {{c}} {mid}.", f"{a}*{m}", b)]
    q = f"On {name}'s farm there are {a} {big}, and there are {word} {mid} as {big}."
    if k == 1:
        return _Draft(q + f" How many {mid} are on the farm?", steps, b)
    c = b // 2
    steps.append((f"There are {{c}} {small}.", f"{b}/2", c))
    q += f" The number of {small} is half the number of {mid}."
    if k == 2:
        return _Draft(q + f" How many {small} live on the farm?", steps, c)
    total = a + b + c
    steps.append(("The farm has {c} animals.", f"{a}+{b}+{c}", total))
    if k == 3:
        return _Draft(q + f" How many {big}, {mid} and {small} are there altogether?", steps, total)
    feed = _r(rng, (2, max(2, d.price[1] // 4)))
    daily = total * feed
    steps.append(("They eat {c} kg of feed a day.", f"{total}*{feed}", daily))
    q += f" Every animal eats {feed} kg of feed a day."
    if k == 4:
        return _Draft(q + " How many kg of feed does the farm use per day?", steps, daily)
    days = _r(rng, d.small)
    steps.append((f"In {days} days they eat {{c}} kg.", f"{daily}*{days}", daily * days))
    return _Draft(q + f" How many kg of feed must {name} buy to last {days} days?", steps, daily * days)


def _average(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    game = rng.choice(_GAMES)
    mean = _r(rng, (max(6, d.big[0]), max(6, d.big[1])))
    spread = max(1, mean // 3)
    s1, s2 = mean + rng.randint(-spread, spread), mean + rng.randint(-spread, spread)
    s3 = 3 * mean - s1 - s2
    total = s1 + s2 + s3
    steps: _Steps = [(f"{name}'s three scores add up to {{c}}.", f"{s1}+{s2}+{s3}", total)]
    q = f"{name} plays three rounds of {game} and scores {s1}, {s2} and {s3} points."
    if k == 1:
        return _Draft(q + f" How many points does {pro} score in total?", steps, total)
    steps.append(("The average is {c} points.", f"{total}/3", mean))
    if k == 2:
        return _Draft(q + f" What is {_poss(pro)} average score per round?", steps, mean)
    gain = rng.randint(1, max(1, d.small[1] // 2))
    fourth = mean + 4 * gain
    new_total = total + fourth
    steps.append(("After four rounds the total is {c} points.", f"{total}+{fourth}", new_total))
    q += f" In a fourth round {pro} scores {fourth} points."
    if k == 3:
        return _Draft(q + f" How many points does {pro} have after four rounds?", steps, new_total)
    new_mean = new_total // 4
    steps.append(("The new average is {c} points.", f"{new_total}/4", new_mean))
    if k == 4:
        return _Draft(q + f" What is {_poss(pro)} average over the four rounds?", steps, new_mean)
    steps.append(("The average goes up by {c} points.", f"{new_mean}-{mean}", gain))
    return _Draft(q + f" By how many points does {_poss(pro)} average per round go up?", steps, gain)


def _poss(pronoun: str) -> str:
    return {"he": "his", "she": "her"}[pronoun]


def _teamwork(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    (n1, _), (n2, _) = rng.sample(_PEOPLE, 2)
    a, b = _r(rng, d.small), _r(rng, d.small)
    rate = a + b
    steps: _Steps = [("Together they pack {c} boxes an hour.", f"{a}+{b}", rate)]
    q = f"At a warehouse, {n1} can pack {a} boxes an hour and {n2} can pack {b} boxes an hour."
    if k == 1:
        return _Draft(q + " How many boxes can they pack in an hour working side by side?", steps, rate)
    hours = _r(rng, d.small)
    order = rate * hours
    steps.append(("The order takes {c} hours.", f"{order}/{rate}", hours))
    q += f" They work together on an order of {order} boxes."
    if k == 2:
        return _Draft(q + " How many hours does the order take them?", steps, hours)
    wage = _r(rng, d.price)
    pay = hours * wage
    steps.append(("Each of them earns {c} dollars.", f"{hours}*{wage}", pay))
    q += f" Both are paid ${wage} per hour."
    if k == 3:
        return _Draft(q + f" How many dollars does {n1} earn for the order?", steps, pay)
    wages = pay * 2
    steps.append(("The wages come to {c} dollars.", f"{pay}*2", wages))
    if k == 4:
        return _Draft(q + " How many dollars does the warehouse pay in wages for the order?", steps, wages)
    extra = _r(rng, d.big)
    price = wages + extra
    steps.append(("The warehouse keeps {c} dollars.", f"{price}-{wages}", extra))
    q += f" The customer pays ${price} for the packing. How many dollars are left after paying both workers?"
    return _Draft(q, steps, extra)


def _recipe(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    kind, food, ingredient = rng.choice(_BAKES)
    per_batch = rng.randint(2, max(2, d.small[1]))
    batches = _r(rng, d.small)
    wanted = per_batch * batches
    steps: _Steps = [(f"{name} needs {{c}} batches.", f"{wanted}/{per_batch}", batches)]
    q = f"One batch of {name}'s {kind} recipe makes {per_batch} {food}. {_cap(pro)} wants {wanted} {food}."
    if k == 1:
        return _Draft(q + " How many batches must " + pro + " make?", steps, batches)
    cups = rng.randint(2, 5)
    need = batches * cups
    steps.append((f"{_cap(pro)} needs {{c}} {ingredient}.", f"{batches}*{cups}", need))
    q += f" Each batch uses {cups} {ingredient}."
    if k == 2:
        return _Draft(q + f" How many {ingredient} does {pro} need?", steps, need)
    bag, bags = _pick_divisor_chain(rng, need, 2, 8)
    have = need - bag * bags
    buy = need - have
    steps.append((f"{_cap(pro)} must buy {{c}} {ingredient}.", f"{need}-{have}", buy))
    q += f" There are already {have} {ingredient} in the cupboard."
    if k == 3:
        return _Draft(q + f" How many more {ingredient} does {pro} have to buy?", steps, buy)
    steps.append(("That is {c} packs.", f"{buy}/{bag}", bags))
    q += f" The shop sells them in packs of {bag}."
    if k == 4:
        return _Draft(q + " How many packs should " + pro + " buy?", steps, bags)
    price = _r(rng, d.price)
    steps.append(("The packs cost {c} dollars.", f"{bags}*{price}", bags * price))
    return _Draft(q + f" A pack costs ${price}. How much will {pro} spend on them?", steps, bags * price)


def _tickets(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    venue, event = rng.choice(_VENUES)
    town = rng.choice(_TOWNS)
    adults, adult_price = _r(rng, d.big), _r(rng, d.price)
    income_a = adults * adult_price
    steps: _Steps = [("Adult tickets bring in {c} dollars.", f"{adults}*{adult_price}", income_a)]
    q = f"On Friday night the {town} {venue} sold {adults} adult tickets"
    q += f" at ${adult_price} each for its {event}"
    if k == 1:
        return _Draft(q + ". How many dollars did the adult tickets make?", steps, income_a)
    kids = _r(rng, d.big)
    kid_price = rng.randint(1, adult_price)
    income_k = kids * kid_price
    friday = income_a + income_k
    q += f", and {kids} child tickets at ${kid_price} each."
    if k == 2:
        steps.append(("Friday brings in {c} dollars.", f"{income_a}+{kids}*{kid_price}", friday))
        return _Draft(q + " How much money did the tickets make on Friday?", steps, friday)
    steps.append(("Child tickets bring in {c} dollars.", f"{kids}*{kid_price}", income_k))
    steps.append(("Friday brings in {c} dollars.", f"{income_a}+{income_k}", friday))
    if k == 3:
        return _Draft(q + " What were Friday's ticket sales in dollars?", steps, friday)
    more = _r(rng, d.big)
    saturday = friday + more
    steps.append(("Saturday brings in {c} dollars.", f"{friday}+{more}", saturday))
    q += f" On Saturday the {venue} took ${more} more than on Friday."
    if k == 4:
        return _Draft(q + " How much did it take on Saturday?", steps, saturday)
    both = friday + saturday
    steps.append(("Over the two nights it takes {c} dollars.", f"{friday}+{saturday}", both))
    return _Draft(q + " How much did it take on Friday and Saturday combined?", steps, both)


def _field_trip(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    place = rng.choice(_DESTINATIONS)
    classes, size = _r(rng, d.small), _r(rng, (max(10, d.big[0] // 2), max(12, d.big[1] // 3)))
    students = classes * size
    steps: _Steps = [("There are {c} students.", f"{classes}*{size}", students)]
    q = f"A school is taking {classes} classes of {size} students each on a trip to {place}."
    if k == 1:
        return _Draft(q + " How many students go on the trip?", steps, students)
    seats = rng.randint(max(2, d.small[1]), max(3, 4 * d.small[1]))
    buses = students // seats + 1
    adults = seats * buses - students
    people = students + adults
    steps.append(("With the adults, {c} people travel.", f"{students}+{adults}", people))
    q += f" They are joined by {adults} teachers and parents."
    if k == 2:
        return _Draft(q + " How many people travel to " + place + "?", steps, people)
    steps.append(("They fill {c} buses.", f"{people}/{seats}", buses))
    q += f" Every bus seats {seats} people and every seat is taken."
    if k == 3:
        return _Draft(q + " How many buses does the school hire?", steps, buses)
    fare = _r(rng, d.big)
    cost = buses * fare
    steps.append(("The buses cost {c} dollars.", f"{buses}*{fare}", cost))
    q += f" Hiring a bus for the day costs ${fare}."
    if k == 4:
        return _Draft(q + " How many dollars do the buses cost?", steps, cost)
    budget = cost + _r(rng, d.big)
    steps.append(("The budget has {c} dollars left.", f"{budget}-{cost}", budget - cost))
    return _Draft(
        q + f" The trip budget is ${budget}. How much of it is left after the buses?", steps, budget - cost
    )


def _temperature(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    town = rng.choice(_TOWNS)
    start = _r(rng, (max(20, d.big[0]), max(40, min(70, d.big[1]))))
    per_hour, hours = rng.randint(2, max(2, d.small[1] // 2)), rng.randint(2, 6)
    rise = per_hour * hours
    steps: _Steps = [("The temperature climbs {c} degrees.", f"{per_hour}*{hours}", rise)]
    q = (
        f"In {town} the thermometer read {start} degrees Fahrenheit at 7 a.m. and then went up"
        f" {per_hour} degrees every hour for {hours} hours."
    )
    if k == 1:
        return _Draft(q + " By how many degrees did it warm up?", steps, rise)
    peak = start + rise
    steps.append(("At its warmest it is {c} degrees.", f"{start}+{rise}", peak))
    if k == 2:
        return _Draft(q + " What was the highest temperature of the day?", steps, peak)
    fall = rng.randint(1, rise - 1)
    evening = peak - fall
    steps.append(("In the evening it is {c} degrees.", f"{peak}-{fall}", evening))
    q += f" A storm then cooled the town by {fall} degrees before evening."
    if k == 3:
        return _Draft(q + " What was the temperature in the evening?", steps, evening)
    if k == 4:
        steps.append(("It is {c} degrees warmer than in the morning.", f"{evening}-{start}", evening - start))
        return _Draft(q + " How much warmer was the evening than the morning?", steps, evening - start)
    drop, night = rng.randint(1, 3), rng.randint(2, 6)
    steps.append(("Overnight it cools by {c} degrees.", f"{drop}*{night}", drop * night))
    steps.append(("By morning it is {c} degrees.", f"{evening}-{drop * night}", evening - drop * night))
    q += f" Overnight it fell {drop} degrees an hour for {night} hours. What was the temperature at dawn?"
    return _Draft(q, steps, evening - drop * night)


def _truck(rng: random.Random, k: int, d: Difficulty) -> _Draft:
    name, pro = rng.choice(_PEOPLE)
    cargo = rng.choice(_CARGO)
    sacks, kg = _r(rng, d.small), rng.choice((5, 10, 20, 25, 50))
    crate = sacks * kg
    steps: _Steps = [("One pallet weighs {c} kg.", f"{sacks}*{kg}", crate)]
    q = f"{name} drives a delivery truck. Each pallet holds {sacks} sacks of {cargo}"
    q += f", and a sack weighs {kg} kg."
    if k == 1:
        return _Draft(q + " What does one pallet weigh in kg?", steps, crate)
    pallets = rng.randint(2, max(2, d.small[1]))
    load = crate * pallets
    steps.append((f"{_cap(pro)} carries {{c}} kg.", f"{crate}*{pallets}", load))
    q += f" Today {pro} loads {pallets} pallets."
    if k == 2:
        return _Draft(q + f" How many kg of {cargo} does the truck carry?", steps, load)
    dropped = rng.randint(1, pallets - 1)
    rest = load - dropped * crate
    steps.append(("{c} kg are still on board.", f"{load}-{dropped}*{crate}", rest))
    q += f" At the first shop {pro} unloads {dropped} of the pallets."
    if k == 3:
        return _Draft(q + f" How many kg of {cargo} are left on the truck?", steps, rest)
    empty = 100 * rng.randint(20, 60)
    gross = rest + empty
    steps.append(("The truck now weighs {c} kg.", f"{rest}+{empty}", gross))
    q += f" The empty truck weighs {empty} kg."
    if k == 4:
        return _Draft(q + " What does the loaded truck weigh after the first stop?", steps, gross)
    limit = 1000 * (gross // 1000 + rng.randint(1, 3))
    steps.append(("It is {c} kg under the limit.", f"{limit}-{gross}", limit - gross))
    q += f" A bridge on the way allows at most {limit} kg. How many kg below the limit is the truck?"
    return _Draft(q, steps, limit - gross)


EXTRA: dict[str, Template] = {
    "discount": _discount,
    "lessons": _lessons,
    "bake_sale": _bake_sale,
    "scores": _scores,
    "farm": _farm,
    "average": _average,
    "teamwork": _teamwork,
    "recipe": _recipe,
    "tickets": _tickets,
    "field_trip": _field_trip,
    "temperature": _temperature,
    "truck": _truck,
}
