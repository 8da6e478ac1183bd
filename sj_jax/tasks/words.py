"""Word lists the task generators draw from: common, lower-case, ASCII English words."""

from __future__ import annotations

NOUNS = tuple("""
apple river garden window bottle candle forest pencil rabbit silver bridge cookie dragon engine farmer
guitar hammer island jacket kitten ladder marble needle orange pepper pillow planet pocket puzzle rocket
saddle salmon shadow spider summer ticket tomato tunnel turtle valley violin wallet winter yellow anchor
basket button camera carpet castle cherry circle cotton desert doctor donkey elbow feather finger flower
gentle ginger hollow honey insect jungle kettle lemon lizard meadow monkey mountain mirror muffin
napkin ocean office oyster parrot pebble pirate potato pumpkin rainbow ribbon saucer school sister spoon
stable sugar table teacher thunder tiger tower travel velvet wagon walnut water wizard zebra
bread chair cloud dream earth field glass heart horse house light money music night paper phone plant
queen sheep shirt smile snake stone storm sword train truck whale wheel world
""".split())

NAMES = ("Alice", "Bruno", "Chen", "Dana", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yusuf", "Zoe")

SURNAMES = ("Adams", "Baker", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen",
            "Kowalski", "Lopez", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Silva", "Tanaka", "Weber")

CITIES = ("Lyon", "Oslo", "Lima", "Porto", "Cairo", "Dublin", "Kyoto", "Quito", "Seville", "Tallinn", "Vienna",
          "Zagreb", "Austin", "Bergen", "Cork", "Dakar", "Graz", "Hanoi", "Izmir", "Leeds")

JOBS = ("baker", "nurse", "pilot", "lawyer", "painter", "chemist", "plumber", "teacher", "farmer", "architect",
        "librarian", "dentist", "engineer", "gardener", "tailor")

COLORS = ("red", "blue", "green", "black", "white", "purple", "orange", "brown", "grey", "pink")
