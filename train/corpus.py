"""Sentences to speak: generated from a small hand-written lexicon with a grammar.

No text corpus can be downloaded here, and a generator gives what the data needs: a few
thousand distinct, grammatical, everyday English sentences in a fixed order, with
statements, questions, requests, exclamations, lists and numbers (so intonation, pauses
and phrase boundaries vary), and words that cover every phoneme of the inventory
(measure, vision, boy, choice, thought, this, judge, church, sing ...). All words and
templates below were written for this project.

`sentences()` is deterministic: the same list on every machine. `split_of(sentence)` puts
about a tenth of them in the validation split by a hash of the text, so a sentence is in
the same split in every run.
"""

from __future__ import annotations

import functools
import random
import zlib

NAMES = ("Anna", "Ben", "Chloe", "David", "Emma", "Frank", "Grace", "Harry", "Isabel", "Jack",
         "Karen", "Leo", "Maria", "Nathan", "Olivia", "Peter", "Quentin", "Rosa", "Sam",
         "Thomas", "Ursula", "Victor", "Wendy", "Yusuf", "Zoe", "Mister Jones",
         "Doctor Patel", "my brother", "my sister", "our neighbour", "the teacher",
         "the old man", "the young woman", "the driver", "the doctor", "your friend")

# (singular, plural)
NOUNS = (("book", "books"), ("car", "cars"), ("garden", "gardens"), ("window", "windows"),
         ("letter", "letters"), ("bottle", "bottles"), ("picture", "pictures"),
         ("table", "tables"), ("chair", "chairs"), ("house", "houses"), ("boat", "boats"),
         ("bridge", "bridges"), ("cup", "cups"), ("apple", "apples"), ("orange", "oranges"),
         ("cake", "cakes"), ("bag", "bags"), ("box", "boxes"), ("key", "keys"),
         ("phone", "phones"), ("computer", "computers"), ("song", "songs"),
         ("story", "stories"), ("question", "questions"), ("answer", "answers"),
         ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"),
         ("fish", "fish"), ("cow", "cows"), ("mouse", "mice"), ("tree", "trees"),
         ("flower", "flowers"), ("river", "rivers"), ("mountain", "mountains"),
         ("village", "villages"), ("city", "cities"), ("road", "roads"), ("train", "trains"),
         ("ticket", "tickets"), ("jacket", "jackets"), ("shoe", "shoes"), ("hat", "hats"),
         ("sandwich", "sandwiches"), ("treasure", "treasures"), ("measure", "measures"),
         ("vision", "visions"), ("garage", "garages"), ("toy", "toys"), ("coin", "coins"),
         ("voice", "voices"), ("choice", "choices"), ("thought", "thoughts"),
         ("church", "churches"), ("judge", "judges"), ("bridge", "bridges"),
         ("engine", "engines"), ("machine", "machines"), ("map", "maps"),
         ("blanket", "blankets"), ("pillow", "pillows"), ("kitchen", "kitchens"),
         ("museum", "museums"), ("market", "markets"), ("school", "schools"),
         ("doctor", "doctors"), ("farmer", "farmers"), ("singer", "singers"),
         ("problem", "problems"), ("plan", "plans"), ("idea", "ideas"),
         ("umbrella", "umbrellas"), ("pencil", "pencils"), ("paper", "papers"),
         ("window seat", "window seats"), ("birthday card", "birthday cards"),
         ("photograph", "photographs"), ("newspaper", "newspapers"), ("bicycle", "bicycles"),
         ("wallet", "wallets"), ("mirror", "mirrors"), ("basket", "baskets"),
         ("lamp", "lamps"), ("clock", "clocks"), ("ring", "rings"), ("shirt", "shirts"),
         ("bench", "benches"), ("fence", "fences"), ("path", "paths"), ("beach", "beaches"),
         ("island", "islands"), ("forest", "forests"), ("valley", "valleys"),
         ("cloud", "clouds"), ("storm", "storms"), ("wheel", "wheels"), ("rope", "ropes"),
         ("puzzle", "puzzles"), ("recipe", "recipes"), ("envelope", "envelopes"),
         ("parcel", "parcels"), ("meeting", "meetings"), ("lesson", "lessons"),
         ("movie", "movies"), ("concert", "concerts"), ("holiday", "holidays"),
         ("present", "presents"), ("pumpkin", "pumpkins"), ("potato", "potatoes"),
         ("tomato", "tomatoes"), ("cookie", "cookies"), ("bowl", "bowls"),
         ("spoon", "spoons"), ("fork", "forks"), ("knife", "knives"), ("door", "doors"),
         ("roof", "roofs"), ("wall", "walls"), ("floor", "floors"), ("boot", "boots"))

MASS_NOUNS = ("water", "bread", "coffee", "tea", "music", "money", "rice", "soup", "milk",
              "sugar", "butter", "cheese", "furniture", "luggage", "homework", "leisure",
              "sunshine", "snow", "rain", "news", "advice", "information", "juice")

# (base, past, -ing); every verb takes an object
VERBS = (("open", "opened", "opening"), ("close", "closed", "closing"),
         ("find", "found", "finding"), ("lose", "lost", "losing"), ("buy", "bought", "buying"),
         ("sell", "sold", "selling"), ("paint", "painted", "painting"),
         ("clean", "cleaned", "cleaning"), ("fix", "fixed", "fixing"),
         ("carry", "carried", "carrying"), ("bring", "brought", "bringing"),
         ("take", "took", "taking"), ("watch", "watched", "watching"),
         ("move", "moved", "moving"), ("hide", "hid", "hiding"), ("wash", "washed", "washing"),
         ("check", "checked", "checking"), ("borrow", "borrowed", "borrowing"),
         ("return", "returned", "returning"), ("choose", "chose", "choosing"),
         ("push", "pushed", "pushing"), ("pull", "pulled", "pulling"),
         ("throw", "threw", "throwing"), ("catch", "caught", "catching"),
         ("draw", "drew", "drawing"), ("build", "built", "building"),
         ("measure", "measured", "measuring"), ("enjoy", "enjoyed", "enjoying"),
         ("judge", "judged", "judging"), ("share", "shared", "sharing"),
         ("describe", "described", "describing"), ("visit", "visited", "visiting"),
         ("remember", "remembered", "remembering"), ("forget", "forgot", "forgetting"),
         ("keep", "kept", "keeping"), ("see", "saw", "seeing"), ("hear", "heard", "hearing"),
         ("order", "ordered", "ordering"), ("deliver", "delivered", "delivering"),
         ("cook", "cooked", "cooking"), ("bake", "baked", "baking"),
         ("sing", "sang", "singing"), ("read", "read", "reading"),
         ("write", "wrote", "writing"), ("send", "sent", "sending"),
         ("show", "showed", "showing"), ("follow", "followed", "following"),
         ("explain", "explained", "explaining"), ("finish", "finished", "finishing"),
         ("start", "started", "starting"), ("touch", "touched", "touching"),
         ("wrap", "wrapped", "wrapping"), ("fill", "filled", "filling"),
         ("empty", "emptied", "emptying"), ("drop", "dropped", "dropping"),
         ("lift", "lifted", "lifting"), ("test", "tested", "testing"),
         ("photograph", "photographed", "photographing"), ("repair", "repaired", "repairing"))

ADJECTIVES = ("big", "small", "old", "new", "red", "blue", "green", "yellow", "purple",
              "orange", "warm", "cold", "heavy", "light", "bright", "dark", "quiet", "loud",
              "beautiful", "ugly", "strange", "usual", "unusual", "famous", "tiny", "huge",
              "clean", "dirty", "wet", "dry", "soft", "hard", "sharp", "smooth", "round",
              "square", "expensive", "cheap", "useful", "boring", "exciting", "funny",
              "serious", "careful", "lovely", "awful", "perfect", "broken", "empty", "full",
              "fresh", "sweet", "sour", "bitter", "smoky", "shiny", "wooden", "golden",
              "plastic", "enormous", "pleasant", "noisy", "joyful", "gloomy", "sleepy")

ADVERBS = ("quickly", "slowly", "carefully", "quietly", "happily", "suddenly", "gently",
           "easily", "badly", "politely", "again", "together", "right away", "once more",
           "without a word", "with a smile", "by mistake", "on purpose")

TIMES = ("today", "yesterday", "tomorrow", "this morning", "last night", "on Monday",
         "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday",
         "on Sunday", "next week", "last summer", "in the evening", "after lunch",
         "before dinner", "at noon", "at midnight", "at seven o'clock", "at half past nine",
         "in 1999", "in June", "in the winter", "every day", "twice a week", "at 6:30",
         "on the fourth of July", "in twenty minutes", "an hour ago")

PLACES = ("in the kitchen", "in the garden", "at the station", "near the river",
          "by the window", "on the table", "under the bed", "behind the door",
          "at the market", "in the museum", "at school", "at work", "on the beach",
          "in the village", "across the road", "on the bus", "in the car", "at the party",
          "in the garage", "upstairs", "downstairs", "outside", "at home",
          "in the forest", "on the island", "at the bakery", "in the library")

CITIES = ("London", "Paris", "Boston", "Chicago", "Dublin", "Sydney", "Toronto", "Madrid",
          "Berlin", "Tokyo", "Cairo", "Lisbon", "Edinburgh", "Seattle", "Denver", "Glasgow",
          "Vienna", "Rome", "Oslo", "Helsinki", "Montreal", "Nairobi", "Mumbai", "Auckland")

RELATIVES = ("mother", "father", "aunt", "uncle", "cousin", "grandmother", "grandfather",
             "daughter", "son", "wife", "husband", "best friend", "neighbour", "boss")

NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
           "fifteen", "twenty", "forty", "a hundred", "a dozen", "several", "a few", "many",
           "3", "7", "11", "25", "42", "99", "150")

INTERJECTIONS = ("Oh", "Well", "Wow", "Look", "Hey", "Listen", "Honestly", "Actually",
                 "Oh dear", "Goodness", "Right", "Okay", "Yes", "No", "Hmm")

FEELINGS = ("happy", "sad", "surprised", "tired", "worried", "excited", "angry", "curious",
            "nervous", "proud", "bored", "hungry", "thirsty", "cheerful", "confused")


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _templates(r: random.Random):
    """Each call returns one sentence from a randomly picked pattern."""
    name = r.choice(NAMES)
    name2 = r.choice([n for n in NAMES if n != name])
    noun, nouns = r.choice(NOUNS)
    noun2, nouns2 = r.choice(NOUNS)
    mass, mass2 = r.sample(MASS_NOUNS, 2)
    verb, past, ing = r.choice(VERBS)
    verb2, past2, _ = r.choice(VERBS)
    adj, adj2, adj3 = r.sample(ADJECTIVES, 3)
    adv, time, place = r.choice(ADVERBS), r.choice(TIMES), r.choice(PLACES)
    city, rel, num = r.choice(CITIES), r.choice(RELATIVES), r.choice(NUMBERS)
    inter, feel = r.choice(INTERJECTIONS), r.choice(FEELINGS)
    patterns = (
        f"{name} {past} the {adj} {noun} {time}.",
        f"{name} {past} the {noun} {place} and {past2} the {noun2} {adv}.",
        f"Did you {verb} the {adj} {noun} {place}?",
        f"Why did {name} {verb} the {noun} {time}?",
        f"Where did you {verb} the {nouns}?",
        f"Could you please {verb} the {noun} {adv}?",
        f"Please {verb} the {adj} {noun} and {verb2} the {noun2}.",
        f"I think we should {verb} the {noun} before {r.choice(['lunch', 'dinner', 'the meeting', 'the train leaves', 'it gets dark', 'the guests arrive'])}.",  # noqa: E501
        f"The {noun} {place} is {adj}, but the {noun2} is {adj2}.",
        f"{inter}, that {noun} is really {adj}!",
        f"{inter}, I did not expect the {noun} to be so {adj}.",
        f"We bought {num} {nouns} and some {mass} {time}.",
        f"My {rel} lives in {city}, not far from the {noun}.",
        f"If it rains {time}, we will {verb} the {nouns} {place}.",
        f"How many {nouns} did you {verb} {time}?",
        f"{name} said that the {noun} was {adj} and a little {adj2}.",
        f"Do you want {_article(adj + ' ' + noun)} or {_article(adj2 + ' ' + noun2)}?",
        f"It was {adj}, {adj2}, and rather {adj3}.",
        f"{name} was {feel} because {name2} {past} the {noun}.",
        f"Is the {noun} {adj} enough for {name2}?",
        f"There are {num} {nouns} {place}.",
        f"I have never seen such {_article(adj)} {noun} in {city}.",
        f"{name} and {name2} are {ing} the {nouns} {place}.",
        f"When you {verb} the {noun}, remember to {verb2} the {noun2}.",
        f"We need {mass}, {nouns}, and {_article(noun2)}.",
        f"{inter}! Somebody {past} my {adj} {noun}!",
        f"The {nouns} were {adj} {time}, so we stayed {place}.",
        f"What a {adj} {noun}!",
        f"Have you ever tried to {verb} {_article(noun)} {adv}?",
        f"{name} likes {mass}, but {name2} prefers {mass2}.",
        f"I am {feel}, because the {noun} is still {place}.",
        f"Would you like some {mass} with your {noun}?",
        f"The {adj} {noun} belongs to my {rel}.",
        f"Tell {name2} to {verb} the {nouns} {time}.",
        f"First we {past} the {noun}, then we {past2} the {nouns2}.",
        f"Nobody knows who {past} the {noun} {place}.",
        f"Let's {verb} the {noun} {time}, shall we?",
        f"It takes {num} minutes to {verb} {_article(adj)} {noun}.",
        f"{name} asked whether the {noun} was {adj} or {adj2}.",
        f"Thank you for {ing} the {noun}, {name2}.",
    )
    return _cap(r.choice(patterns))


@functools.cache
def _sentences(count: int, seed: int) -> tuple[str, ...]:
    r = random.Random(seed)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count:
        attempts += 1
        if attempts > 50 * count:
            raise RuntimeError(f"the grammar cannot make {count} distinct sentences")
        s = " ".join(_templates(r).split())
        seen.setdefault(s, None)
    return tuple(seen)


def sentences(count: int = 6000, seed: int = 0) -> list[str]:
    """`count` distinct sentences, the same list for the same (count, seed)."""
    return list(_sentences(count, seed))


def split_of(sentence: str, validation_percent: int = 10) -> str:
    """'val' for about `validation_percent` % of sentences (by a hash of the text), else 'train'."""
    return "val" if zlib.crc32(sentence.encode()) % 100 < validation_percent else "train"


def sentences_for(split: str, count: int = 6000) -> list[str]:
    return [s for s in sentences(count) if split_of(s) == split]


if __name__ == "__main__":
    for s in sentences(30):
        print(s)
