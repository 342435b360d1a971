"""The default public held-out prompts of the channel test: short grade-school word problems written for
tracemark (never served to a customer, so no trace of ours answers them). An investigation records the
prompts it uses (and their SHA-256) in its pre-registration; give others with ``--channel-prompts``."""

from __future__ import annotations

DEFAULT_PROMPTS: tuple[str, ...] = (
    "A baker makes 14 loaves in the morning and 9 in the afternoon. He sells 17. How many are left?",
    "Mia reads 12 pages a day for 6 days, then 20 pages on Sunday. How many pages does she read in total?",
    "A bus has 38 passengers. At the first stop 11 get off and 7 get on. How many passengers are on the bus?",
    "Tom buys 3 notebooks at $4 each and a pen for $2. He pays with a $20 bill. How much change does he get?",
    "A garden has 5 rows of 8 tulips and 3 rows of 6 roses. How many flowers are in the garden?",
    "Lena saves $15 a week. How many weeks does she need to save $135?",
    "A train travels 60 km per hour for 3 hours and then 45 km per hour for 2 hours. How far does it go?",
    "There are 24 students in a class. One third of them walk to school. How many do not walk?",
    "A box holds 12 eggs. How many boxes are needed for 100 eggs?",
    "Sam has twice as many marbles as Ana. Ana has 17 marbles. How many do they have together?",
    "A shirt costs $30 and is on sale for 20% off. What is the sale price?",
    "A farmer has 7 cows and each cow gives 9 liters of milk a day. How much milk is that in a week?",
    "Jake runs 2.5 km every weekday and 5 km on Saturday. How far does he run in a week?",
    "A pizza has 8 slices. Four friends eat 2 slices each. How many slices are left?",
    "Nora is 4 years older than her brother, who is 9. How old will Nora be in 5 years?",
    "A pool fills at 40 liters per minute. How long does it take to fill 1,000 liters?",
    "A shop sold 125 apples on Monday and 3 times as many on Tuesday. How many apples in both days?",
    "Eli has 56 stickers and gives 1/4 of them to his sister. How many stickers does he keep?",
    "A rectangle is 7 m long and 4 m wide. What is its perimeter and its area?",
    "Tickets cost $12; children pay half. What do 2 adults and 3 children pay?",
    "A car uses 6 liters of fuel per 100 km. How much fuel does it need for 350 km?",
    "Ravi picks 18 strawberries, eats 5 and shares the rest equally with his friend. How many does each get?",
    "A library has 420 books and buys 15 new books every month. How many books will it have after a year?",
    "A recipe needs 3 cups of flour for 12 cookies. How many cups are needed for 30 cookies?",
)
