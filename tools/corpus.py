"""A small probabilistic grammar of short English reviews.

This is the training corpus of the project's embedded default model
(``textenv/assets/tiny-reviews-gpt2``, built by :mod:`tools.pretrain`) and the
source of its built-in prompt set (``textenv/assets/prompts.json``).

Reviews cover seven domains (films, books, products, restaurants, hotels, video
games and albums) and carry one of four sentiments, drawn with probabilities
0.35 positive, 0.35 negative, 0.15 neutral and 0.15 mixed.  Every positive or
negative sentence contains ordinary sentiment words that VADER knows ("superb",
"awful", "loved", "disappointing", ...), so the VADER compound score of a review
agrees with its label.  A review has 1-4 sentences and 10-60 words, e.g.::

    We stayed at the Linden Inn in Porto for three nights, and the bed was
    comfortable and spotless. The staff were friendly and helpful. We would
    happily stay here again.

Review *openings* (:func:`generate_prompts`) are the first 3-10 words of such a
review, cut mid-sentence and free of sentiment words ("I ordered the lamb curry
at Saffron House and", "This air fryer"), so a policy continuing one decides
the sentiment itself.

The grammar, ``GRAMMAR``, maps a symbol to a tuple of alternatives that are
picked uniformly (weights come from repeating an alternative).  Alternatives
are templates in which ``{name}`` is expanded recursively.  A symbol is first
looked up as ``"<domain>:name"`` (``"film:aspect_sg"``), then as ``"name"``, so a
generic sentence such as ``"{aspect_be} {pos}."`` reads naturally in every
domain.  Symbols starting with ``$`` (``{$name}``, ``{$product}``) are expanded
once per review and reused, so a review keeps talking about the same film or
blender; aspects and adjectives are not repeated within a review.  All
randomness comes from a private ``random.Random(seed)``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

__all__ = [
    "DOMAINS",
    "SENTIMENTS",
    "GRAMMAR",
    "MIN_WORDS",
    "MAX_WORDS",
    "generate_reviews",
    "generate_prompts",
    "distinct_words",
]

# ==========================================================================
# Word lists.  Everything outside the sentiment lists is sentiment-neutral
# (no word carries a VADER valence), so openings built from them are neutral.
# ==========================================================================

FIRST_NAMES = (
    "Ava", "Marco", "Priya", "Tomas", "Elena", "Samir", "Hannah", "Diego", "Yuki",
    "Oliver", "Amara", "Felix", "Ingrid", "Rafael", "Leila", "Jonas", "Mei", "Nadia",
    "Owen", "Clara", "Mateo", "Sofia", "Kwame", "Isla", "Anton", "Beatrice", "Callum",
    "Dara", "Emil", "Farah", "Gideon", "Hazel", "Ivan", "Juno", "Kenji", "Lucia",
    "Milo", "Nora", "Oscar", "Paloma", "Quentin", "Rosa", "Stellan", "Talia", "Ulrich",
    "Vera", "Wen", "Ximena", "Yara", "Zane", "Arjun", "Bianca", "Cormac", "Delphine",
    "Esme", "Florian", "Greta", "Hugo", "Ines", "Jasper", "Kofi", "Lorenzo", "Maren",
    "Niamh", "Otto", "Petra", "Ravi", "Saskia", "Theo", "Valentina",
)

LAST_NAMES = (
    "Albright", "Brennan", "Castellano", "Dubois", "Eriksen", "Galloway", "Hartmann",
    "Iwasaki", "Jovanovic", "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor",
    "Petrakis", "Quinlan", "Rasmussen", "Santos", "Thornton", "Underwood", "Valdez",
    "Whitlock", "Yamamoto", "Zielinski", "Abernathy", "Bellamy", "Carrow", "Delacroix",
    "Ellison", "Fontaine", "Holloway", "Ibarra", "Jensen", "Kavanagh", "Lachance",
    "Mendoza", "Novak", "Oduya", "Pemberton", "Reyes", "Sorensen", "Tanaka", "Varga",
    "Winslow", "Beaumont", "Calloway", "Dempsey", "Everett", "Hargrove", "Kessler",
    "Lowell", "Marchetti", "Navarro", "Prescott", "Rourke", "Sandoval", "Talbot",
    "Vance", "Whitaker", "Ferreira", "Gallagher", "Haddad", "Lindgren", "Ostrowski",
)

CITIES = (
    "Lisbon", "Kyoto", "Denver", "Glasgow", "Marseille", "Portland", "Edinburgh",
    "Seville", "Krakow", "Toronto", "Melbourne", "Austin", "Bologna", "Dublin", "Oslo",
    "Prague", "Valencia", "Nairobi", "Montreal", "Vancouver", "Hanoi", "Istanbul",
    "Porto", "Vienna", "Budapest", "Copenhagen", "Chicago", "Boston", "Savannah",
    "Santa Fe", "Cape Town", "Reykjavik", "Tallinn", "Lyon", "Naples", "Galway",
    "Quebec", "Helsinki", "Bruges", "Seattle", "Madrid", "Athens", "Osaka", "Lima",
)

LANGUAGES = (
    "French", "Spanish", "Korean", "Japanese", "German", "Italian", "Portuguese",
    "Danish", "Polish", "Turkish", "Hindi", "Swedish", "Greek", "Dutch", "Icelandic",
)

COMPANIONS = (
    "sister", "brother", "mother", "father", "wife", "husband", "partner", "roommate",
    "flatmate", "cousin", "grandmother", "grandfather", "aunt", "uncle", "daughter",
    "son", "coworkers", "book club", "kids", "girlfriend", "boyfriend", "neighbor",
    "in-laws", "classmates", "teenage nephew", "niece", "colleague",
)

WHEN = (
    "last night", "last weekend", "on Saturday", "over the winter break",
    "on a quiet Sunday", "during a long flight", "on my lunch break", "last month",
    "two weeks ago", "yesterday afternoon", "on our anniversary", "for my birthday",
    "on Friday night", "over spring break", "during a snowstorm", "this morning",
    "on a Tuesday evening", "after work", "in early October", "last summer",
)

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
)

SEASONS = ("spring", "summer", "autumn", "winter", "fall")

NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "twelve", "fifteen", "twenty", "thirty", "forty")

FEW = ("two", "three", "four", "five", "six")

ORDINALS = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
            "tenth", "twelfth")

DURATIONS = (
    "a week", "two weeks", "a month", "three months", "six months", "a year",
    "about two years", "a few days", "a couple of weeks", "nearly a year",
)

DECADES = ("1920s", "1930s", "1950s", "1960s", "1970s", "1980s", "1990s",
           "late nineteenth century", "early twentieth century")

COLORS = ("black", "white", "silver", "navy", "red", "green", "blue", "beige",
          "gray", "charcoal", "olive", "teal", "copper", "sand", "burgundy", "slate")

# Titles of films, books, games and albums are built from these.
TITLE_ADJECTIVES = (
    "Silent", "Hidden", "Crimson", "Golden", "Winter", "Midnight", "Northern", "Hollow",
    "Distant", "Painted", "Scarlet", "Quiet", "Velvet", "Iron", "Glass", "Paper",
    "Copper", "Silver", "Endless", "Wandering", "Sleeping", "Electric", "Frozen",
    "Last", "Long", "Little", "Open", "Salt", "Stone", "Summer", "Autumn", "Evening",
    "Morning", "Amber", "Emerald", "Ivory", "Shallow", "Southern",
    "Eastern", "Western", "Hundredth", "Seventh", "Invisible", "Sunken", "Floating",
    "Borrowed", "Narrow", "Blue", "Black", "White", "Green", "Wild", "Small",
    "Tall", "Faraway", "Moonlit", "Starless", "Marble", "Cobalt", "Saffron",
)

TITLE_NOUNS = (
    "Harbor", "River", "Garden", "Mountain", "Kingdom", "Letter", "Orchard",
    "Lighthouse", "Station", "Island", "Forest", "Tide", "Compass", "Lantern", "Mirror",
    "Window", "Bridge", "Road", "Valley", "Archive", "Machine", "Signal", "Horizon",
    "Meadow", "Canyon", "Cathedral", "Frontier", "Voyage", "Empire", "Season", "Engine",
    "Atlas", "Ledger", "Tower", "Harvest", "Shore", "Desert", "Circus", "Carnival",
    "Parade", "Orbit", "Comet", "Planet", "Ocean", "Current", "Map", "Key", "Clock",
    "Weather", "Country", "Village", "House", "Room", "Door", "Staircase",
    "Cellar", "Attic", "Library", "Museum", "Theater", "Ferry", "Train", "Caravan",
    "Sister", "Daughter", "Stranger", "Traveler", "Painter", "Gardener", "Watchmaker",
    "Astronomer", "Cartographer", "Beekeeper", "Fisherman", "Detective", "Tailor",
    "Orchestra", "Balloon", "Glacier", "Volcano", "Chapel", "Citadel", "Quarry",
)

TITLE_ABSTRACTS = (
    "Memory", "Silence", "Distance", "Salt", "Glass", "Ash", "Thunder", "Winter",
    "Stone", "Rain", "Dust", "Smoke", "Light", "Tides", "Small Things", "Echoes",
    "Shadows", "Snow", "Summer", "Strangers", "Maps", "Clocks", "Birds", "Wolves",
    "Bees", "Islands", "Rivers", "Lanterns", "the North", "the Sea", "the Desert",
)

ROLES = (
    "detective", "retired boxer", "small town sheriff", "young teacher", "ship captain",
    "exiled prince", "jazz pianist", "lighthouse keeper", "night nurse", "con artist",
    "chess prodigy", "wedding photographer", "beekeeper", "forensic accountant",
    "botanist", "train conductor", "mountain guide", "cartographer", "pastry chef",
    "archivist", "astronaut", "fisherman", "court stenographer", "tailor",
    "translator", "veterinarian", "taxi driver", "marine biologist", "carpenter",
    "museum guard", "radio host", "border guard", "surgeon", "schoolgirl",
)

FILM_GENRES = (
    "suspense film", "caper", "drama", "slasher", "rom-com", "documentary",
    "western", "science fiction film", "animated film", "police procedural",
    "period drama", "musical", "heist movie", "period piece", "coming-of-age story",
    "mystery", "fantasy epic", "spy movie", "courtroom drama", "road movie", "biopic",
    "sports drama", "family film", "noir", "space opera", "sequel",
)

BOOK_GENRES = (
    "book", "memoir", "biography", "short story collection", "mystery",
    "fantasy saga", "historical fiction", "science fiction book", "cookbook",
    "travel guide", "essay collection", "poetry collection", "self-help book",
    "comic book", "suspense story", "debut", "young adult book",
    "detective story", "family saga", "science book", "history book", "novella",
)

GAME_GENRES = (
    "role-playing game", "platformer", "puzzle game", "racing game", "strategy game",
    "survival game", "shooter", "farming sim", "city builder", "roguelike",
    "sports game", "rhythm game", "open world game", "card game",
    "detective game", "flight simulator", "management sim", "point-and-click game",
)

PLATFORMS = ("PC", "console", "handheld", "laptop", "tablet", "phone", "Steam Deck")

MUSIC_GENRES = (
    "folk", "jazz", "hip hop", "indie rock", "synth pop", "country", "blues", "soul",
    "electronic", "punk", "metal", "ambient", "classical", "bluegrass", "reggae",
    "funk", "shoegaze", "post rock", "garage rock", "disco", "gospel", "techno",
)

INSTRUMENTS = ("piano", "cello", "violin", "saxophone", "trumpet", "banjo",
               "synthesizer", "accordion", "organ", "mandolin", "drum machine", "harp")

PRODUCTS = (
    "blender", "toaster", "kettle", "coffee maker", "vacuum", "air fryer",
    "microwave", "rice cooker", "stand mixer", "electric toothbrush", "hair dryer",
    "keyboard", "mouse", "monitor", "laptop", "tablet", "phone case", "charger",
    "power bank", "smartwatch", "step counter", "speaker", "router", "webcam",
    "printer", "desk lamp", "office chair", "standing desk", "backpack", "suitcase",
    "water bottle", "yoga mat", "rain jacket", "tent", "sleeping bag", "camping stove",
    "flashlight", "drill", "lawn mower", "garden hose", "frying pan", "chef's knife",
    "chopping board", "mattress", "pillow", "humidifier", "space heater", "tower heater",
    "thermostat", "doorbell camera", "e-reader", "camera", "tripod", "guitar amp",
    "robot vacuum", "espresso machine", "food processor", "slow cooker", "bike helmet",
    "baby monitor", "dishwasher", "washing machine", "steam iron", "electric scooter",
    "soundbar", "projector", "treadmill", "kayak", "barbecue grill", "lunch box",
    "label printer", "sewing machine", "steamer", "juicer", "waffle iron",
)

PRODUCT_BRANDS = (
    "Norvik", "Kestrel", "Aldenware", "Brightline", "Zenora", "Halvard", "Corvex",
    "Lumora", "Pinebrook", "Vantor", "Quillon", "Tessel", "Arkwell", "Bramble",
    "Ferro", "Helix", "Kobalt", "Larkspur", "Meridian", "Nimbus", "Orbis", "Polaris",
    "Ridgeway", "Tundra", "Umber", "Vesper", "Wexley", "Yarrow", "Zephyr", "Osprey",
)

ROOMS = ("kitchen", "office", "bedroom", "garage", "living room", "basement",
         "studio apartment", "dorm room", "workshop", "spare room", "camper van")

SPICES = (
    "Saffron", "Basil", "Ginger", "Cardamom", "Juniper", "Fennel", "Sage", "Thyme",
    "Rosemary", "Pepper", "Clove", "Sesame", "Olive", "Lemon", "Cedar", "Maple",
    "Tamarind", "Cumin", "Chili", "Mint", "Paprika", "Nutmeg", "Anise", "Sumac",
)

VENUES = (
    "House", "Kitchen", "Bistro", "Table", "Grill", "Diner", "Cafe", "Cantina",
    "Trattoria", "Tavern", "Brasserie", "Noodle Bar", "Taqueria", "Canteen", "Eatery",
    "Bakery", "Steakhouse", "Pizzeria", "Izakaya", "Deli", "Oyster Bar", "Smokehouse",
)

VENUE_OBJECTS = (
    "Kettle", "Spoon", "Ladle", "Anchor", "Lantern", "Fork", "Teapot", "Skillet",
    "Barrel", "Copper Pot", "Green Door", "Red Lantern", "Blue Door", "Old Mill",
    "Brass Bell", "Iron Gate", "Salt Cellar", "Olive Tree", "Fig Tree", "Larder",
)

PROTEINS = (
    "chicken", "beef", "lamb", "pork", "duck", "salmon", "tuna", "shrimp", "tofu",
    "mushroom", "halibut", "cod", "octopus", "squid", "venison", "turkey", "chickpea",
    "lentil", "eggplant", "spinach", "pumpkin", "cauliflower", "crab", "scallop",
    "goat", "rabbit", "halloumi", "paneer", "sausage", "brisket",
)

DISH_TYPES = (
    "curry", "tacos", "stew", "risotto", "burger", "sandwich", "salad", "soup", "pie",
    "skewers", "ramen", "noodles", "fried rice", "gyoza", "wrap", "pasta",
    "casserole", "tagine", "kebab", "pho", "biryani", "enchiladas", "gnocchi",
    "flatbread", "chowder", "lasagna", "burrito", "stir fry", "pot pie", "bao",
)

STANDALONE_DISHES = (
    "pad thai", "margherita pizza", "chicken tikka masala", "caesar salad",
    "fish and chips", "carbonara", "goulash", "moussaka", "ceviche", "bibimbap",
    "shakshuka", "eggs benedict", "french toast", "club sandwich", "poke bowl",
    "sushi platter", "tempura", "katsu curry", "tandoori chicken", "dal makhani",
    "samosas", "greek salad", "gazpacho", "minestrone", "mac and cheese",
    "fried chicken", "jambalaya", "gumbo", "paella", "lobster roll", "steak frites",
    "duck confit", "beef wellington", "mezze platter", "falafel plate", "pierogi",
    "banh mi", "tonkotsu ramen", "chili con carne", "cornbread", "crab cakes",
)

DESSERTS = (
    "cheesecake", "tiramisu", "apple pie", "chocolate cake", "creme brulee",
    "lemon tart", "panna cotta", "gelato", "baklava", "churros", "carrot cake",
    "rice pudding", "pavlova", "bread pudding", "key lime pie", "mochi",
)

DRINKS = (
    "house red", "espresso", "mango lassi", "iced tea", "lemonade", "local beer",
    "margarita", "mint tea", "cold brew", "sangria", "old fashioned", "cider",
    "milkshake", "flat white", "chai latte", "negroni", "hot chocolate",
)

MEALS = ("lunch", "dinner", "brunch", "breakfast", "a late dinner", "a birthday dinner",
         "takeout", "a quick lunch", "Sunday brunch", "a work lunch", "an early dinner")

LANDMARKS = (
    "train station", "old town", "harbor", "cathedral", "main square", "university",
    "beach", "river", "airport", "convention center", "market", "stadium", "park",
    "museum district", "waterfront", "ski lift",
)

HOTEL_WORDS = (
    "Harborview", "Parkside", "Lakeside", "Riverside", "Hilltop", "Seaside", "Oakwood",
    "Meridian", "Regent", "Carlton", "Ashford", "Belmont", "Kingsley", "Waverly",
    "Astor", "Linden", "Willow", "Cedar", "Sterling", "Mayfair", "Northgate",
    "Alder", "Bayside", "Juniper",
)

HOTEL_TYPES = ("Hotel", "Inn", "Lodge", "Suites", "Resort", "Guesthouse", "Motel",
               "Hostel", "Boutique Hotel", "Bed and Breakfast")

# Aspects: what a review talks about.  Singular aspects take "was"/"is",
# plural ones "were"/"are".
FILM_ASPECTS_SG = (
    "acting", "plot", "script", "dialogue", "soundtrack", "score", "cinematography",
    "pacing", "ending", "opening scene", "lead actor", "lead actress",
    "editing", "direction", "twist", "final act", "first hour",
    "costume design", "set design", "lighting", "camera work", "sound design",
    "story", "premise", "climax", "ensemble cast", "screenplay",
    "production design", "chemistry between the leads", "car chase", "finale",
)
FILM_ASPECTS_PL = (
    "visuals", "visual effects", "action scenes", "performances", "characters",
    "stunts", "songs", "chase sequences", "flashbacks", "costumes",
    "landscapes", "side characters", "musical numbers", "montages",
)

BOOK_ASPECTS_SG = (
    "prose", "writing", "plot", "narrator", "main character", "world building",
    "ending", "first chapter", "middle section", "pacing", "dialogue", "premise",
    "translation", "structure", "setting", "voice", "final chapter",
    "mystery", "epilogue", "tone", "central relationship", "audiobook narration", "central mystery",
    "opening line", "family drama", "magic system",
)
BOOK_ASPECTS_PL = (
    "characters", "descriptions", "chapters", "twists", "footnotes", "illustrations",
    "themes", "side characters", "recipes", "letters", "flashbacks", "interludes",
    "poems", "essays", "photographs",
)

PRODUCT_ASPECTS_SG = (
    "build quality", "sound quality", "screen", "design", "motor", "handle", "lid",
    "setup", "fabric", "zipper", "sizing", "grip", "finish", "display", "app", "remote",
    "power cord", "carrying case", "touchscreen", "filter", "base", "stand",
    "battery", "charging dock",
)
PRODUCT_ASPECTS_PL = (
    "buttons", "controls", "wheels", "straps", "blades", "speakers", "seams",
    "settings", "nozzles", "materials", "hinges", "pockets", "accessories",
    "indicator lights",
)

# Only the food: service and atmosphere get their own sentences.
RESTAURANT_ASPECTS_SG = (
    "food", "dessert", "bread", "sauce", "broth", "crust", "seasoning", "coffee",
    "soup of the day", "tasting menu", "catch of the day", "house salad", "pasta",
    "main course", "bread basket", "cheese plate",
)
RESTAURANT_ASPECTS_PL = (
    "portions", "cocktails", "fries", "appetizers", "noodles", "desserts",
    "vegetarian options", "tacos", "spring rolls", "side dishes", "specials", "pastries",
    "drinks", "small plates",
)
RESTAURANT_ROOM_ASPECTS = ("atmosphere", "decor", "dining room", "patio", "terrace",
                           "lighting", "music", "bar area")

# Only the place: the staff get their own sentences.
HOTEL_ASPECTS_SG = (
    "room", "bed", "bathroom", "shower", "breakfast", "pool", "view", "foyer", "gym",
    "balcony", "rooftop bar", "spa", "breakfast buffet", "courtyard", "suite",
    "garden",
)
HOTEL_ASPECTS_PL = (
    "towels", "pillows", "sheets", "rooms", "hallways", "toiletries", "grounds",
    "beds", "bathrooms", "common areas",
)

GAME_ASPECTS_SG = (
    "gameplay", "story", "soundtrack", "level design", "movement", "multiplayer",
    "open world", "campaign", "crafting system", "voice acting", "tutorial",
    "character customization", "map", "ending", "art style", "final boss",
    "inventory system", "online mode", "progression system", "camera", "writing",
    "dialogue system", "skill tree",
)
GAME_ASPECTS_PL = (
    "graphics", "controls", "bosses", "puzzles", "side quests", "menus",
    "cutscenes", "characters", "animations", "vehicles", "levels", "dungeons",
    "companions", "sound effects",
)

ALBUM_ASPECTS_SG = (
    "production", "opening track", "title track", "guitar work", "drumming", "bass line",
    "chorus", "mixing", "second half", "closing track", "ballad", "lead single",
    "songwriting", "voice", "horn section", "piano intro", "bridge",
    "string arrangement", "mood",
)
ALBUM_ASPECTS_PL = (
    "vocals", "lyrics", "melodies", "choruses", "arrangements", "songs",
    "synths", "guitar solos", "hooks", "interludes", "ballads", "drums",
    "verses", "instrumentals", "piano parts", "horns",
)

# --------------------------------------------------------------------------
# Sentiment vocabulary.  Words in the *_POSITIVE / *_NEGATIVE lists all carry a
# VADER valence of that sign; the *_EXTRA lists add realistic descriptive words
# VADER does not know and are only used next to a known one ("fresh and crispy").
# --------------------------------------------------------------------------

GENERIC_POSITIVE = (
    "superb", "excellent", "wonderful", "brilliant", "fantastic", "amazing", "great",
    "lovely", "perfect", "outstanding", "impressive", "terrific", "fabulous", "good",
    "nice", "remarkable", "awesome", "splendid", "flawless", "marvelous", "superior",
    "beautiful", "delightful", "pleasant", "enjoyable", "satisfying",
)
GENERIC_NEGATIVE = (
    "terrible", "awful", "horrible", "dreadful", "disappointing", "poor", "bad",
    "weak", "lousy", "pathetic", "appalling", "useless", "dismal", "crappy", "horrid",
    "inferior", "unpleasant", "miserable", "lame", "sad", "embarrassing",
)

# Films, books, games and albums.
WORK_POSITIVE = (
    "gorgeous", "stunning", "heartfelt", "clever", "funny", "hilarious", "thrilling",
    "exciting", "engaging", "compelling", "fascinating", "entertaining", "inspiring",
    "powerful", "thoughtful", "intelligent", "creative", "fresh", "charming",
    "elegant", "graceful", "sincere", "joyful", "lively", "vibrant", "rich", "warm",
    "sweet", "gentle", "hopeful", "fun", "rewarding", "playful", "brave", "bold",
    "original", "smart", "ambitious",
)
WORK_POSITIVE_EXTRA = (
    "moving", "touching", "witty", "gripping", "captivating", "memorable", "uplifting",
    "refreshing", "polished", "sublime", "dazzling", "tender", "epic", "magical",
    "lyrical", "masterful", "atmospheric", "stylish", "confident", "inventive",
)
WORK_NEGATIVE = (
    "boring", "dull", "joyless", "stupid", "ridiculous", "confusing", "awkward",
    "lazy", "messy", "depressing", "irritating", "annoying", "frustrating", "painful",
    "repetitive", "tired", "chaotic", "hopeless", "unfair", "grim", "flawed",
)
WORK_NEGATIVE_EXTRA = (
    "tedious", "tiresome", "lifeless", "shallow", "pretentious", "clumsy",
    "unconvincing", "overrated", "pointless", "bland", "flat", "predictable",
    "uninspired", "forgettable", "mediocre", "sloppy", "clunky", "unbearable",
    "hollow", "overlong", "derivative", "muddled",
)

PRODUCT_POSITIVE = (
    "efficient", "comfortable", "clean", "effective", "useful", "clever", "smart",
    "elegant", "powerful", "beautiful", "classy", "pleasing", "easy", "bright",
)
PRODUCT_POSITIVE_EXTRA = (
    "reliable", "sturdy", "sleek", "stylish", "handy", "convenient", "durable", "quiet",
    "compact", "intuitive", "lightweight", "responsive", "well built", "simple",
)
PRODUCT_NEGATIVE = (
    "broken", "faulty", "defective", "useless", "worthless", "annoying", "frustrating",
    "confusing", "awkward", "noisy", "ugly", "uncomfortable", "messy", "sluggish",
    "worn", "stupid",
)
PRODUCT_NEGATIVE_EXTRA = (
    "flimsy", "clunky", "unreliable", "cheap", "overpriced", "fiddly", "wobbly", "loud",
    "bulky", "slow", "badly designed", "poorly made", "scratched", "leaky",
)

FOOD_POSITIVE = (
    "delicious", "fresh", "rich", "heavenly", "divine", "yummy", "generous",
    "satisfying", "creative", "elegant", "wonderful", "perfect", "lovely", "warm",
)
FOOD_POSITIVE_EXTRA = (
    "tasty", "flavorful", "crispy", "tender", "fragrant", "juicy", "hearty", "savory",
    "aromatic", "light", "spicy", "zesty", "homemade", "perfectly seasoned",
)
FOOD_NEGATIVE = (
    "disgusting", "gross", "nasty", "bitter", "sad", "dull", "boring", "awful",
    "horrible", "terrible", "disappointing",
)
FOOD_NEGATIVE_EXTRA = (
    "bland", "stale", "greasy", "soggy", "tasteless", "overcooked", "burnt", "rubbery",
    "dry", "salty", "lukewarm", "undercooked", "watery", "cold", "chewy", "overpriced",
    "inedible",
)

# Rooms and places: hotels, and the dining room of a restaurant.
PLACE_POSITIVE = (
    "comfortable", "clean", "lovely", "beautiful", "gorgeous", "stunning", "elegant",
    "charming", "peaceful", "relaxing", "pleasant", "classy", "warm", "nice",
    "welcoming", "bright",
)
PLACE_POSITIVE_EXTRA = (
    "cozy", "spotless", "spacious", "stylish", "modern", "quiet", "airy", "immaculate",
    "calm", "tasteful",
)
PLACE_NEGATIVE = (
    "dirty", "noisy", "uncomfortable", "ugly", "depressing", "gross", "disgusting",
    "nasty", "broken", "miserable", "unpleasant", "dismal", "gloomy", "tired", "sad",
    "grim", "chaotic",
)
PLACE_NEGATIVE_EXTRA = (
    "cramped", "shabby", "dated", "dingy", "stuffy", "musty", "run-down", "cold",
    "dark", "tiny", "overpriced", "loud", "filthy",
)

# Waiters, hotel staff, customer service.
PEOPLE_POSITIVE = (
    "friendly", "helpful", "kind", "welcoming", "generous", "warm", "charming",
    "lovely", "wonderful", "pleasant", "cheerful", "courteous", "efficient",
)
PEOPLE_POSITIVE_EXTRA = (
    "attentive", "polite", "patient", "professional", "knowledgeable", "quick",
)
PEOPLE_NEGATIVE = (
    "rude", "unfriendly", "hostile", "careless", "incompetent", "dishonest", "lazy",
    "arrogant", "impatient", "useless", "unpleasant", "clueless", "disorganized",
)
PEOPLE_NEGATIVE_EXTRA = (
    "unhelpful", "dismissive", "cold", "slow", "inattentive", "grumpy", "absent",
)

# Intensifiers placed before an adjective, and softeners.
BOOSTERS = (
    "really", "truly", "absolutely", "incredibly", "genuinely", "remarkably",
    "surprisingly", "utterly", "thoroughly", "quite", "very", "extremely", "so",
    "pretty", "completely", "totally", "especially", "unbelievably", "just",
)
HEDGES = ("a bit", "slightly", "somewhat", "a little", "rather", "kind of", "fairly")

# Neutral, non-evaluative descriptors used by neutral sentences.
NEUTRAL_ADJECTIVES = (
    "average", "standard", "typical", "ordinary", "conventional", "straightforward",
    "simple", "familiar", "traditional", "basic", "plain", "predictable",
    "unremarkable", "middle of the road", "about what I expected", "serviceable",
    "passable", "functional", "forgettable", "run of the mill",
)

# ==========================================================================
# The grammar.
# ==========================================================================

_WORD_LISTS: dict[str, tuple[str, ...]] = {
    "first": FIRST_NAMES, "last": LAST_NAMES, "city": CITIES, "language": LANGUAGES,
    "companion": COMPANIONS, "when": WHEN, "weekday": WEEKDAYS, "month": MONTHS,
    "season": SEASONS, "number": NUMBERS, "few": FEW, "ordinal": ORDINALS,
    "duration": DURATIONS, "decade": DECADES, "color": COLORS,
    "t_adj": TITLE_ADJECTIVES, "t_noun": TITLE_NOUNS, "t_abstract": TITLE_ABSTRACTS,
    "role": ROLES, "film_genre": FILM_GENRES, "book_genre": BOOK_GENRES,
    "game_genre": GAME_GENRES, "platform": PLATFORMS, "music_genre": MUSIC_GENRES,
    "instrument": INSTRUMENTS, "product_type": PRODUCTS, "brand": PRODUCT_BRANDS,
    "room": ROOMS, "spice": SPICES, "venue": VENUES, "venue_object": VENUE_OBJECTS,
    "protein": PROTEINS, "dish_type": DISH_TYPES, "standalone_dish": STANDALONE_DISHES,
    "dessert": DESSERTS, "drink": DRINKS, "meal": MEALS, "landmark": LANDMARKS,
    "hotel_word": HOTEL_WORDS, "hotel_type": HOTEL_TYPES,
    "film:aspect_sg": FILM_ASPECTS_SG, "film:aspect_pl": FILM_ASPECTS_PL,
    "book:aspect_sg": BOOK_ASPECTS_SG, "book:aspect_pl": BOOK_ASPECTS_PL,
    "product:aspect_sg": PRODUCT_ASPECTS_SG, "product:aspect_pl": PRODUCT_ASPECTS_PL,
    "restaurant:aspect_sg": RESTAURANT_ASPECTS_SG,
    "restaurant:aspect_pl": RESTAURANT_ASPECTS_PL,
    "dining_room": RESTAURANT_ROOM_ASPECTS,
    "hotel:aspect_sg": HOTEL_ASPECTS_SG, "hotel:aspect_pl": HOTEL_ASPECTS_PL,
    "game:aspect_sg": GAME_ASPECTS_SG, "game:aspect_pl": GAME_ASPECTS_PL,
    "album:aspect_sg": ALBUM_ASPECTS_SG, "album:aspect_pl": ALBUM_ASPECTS_PL,
    "generic_pos": GENERIC_POSITIVE, "generic_neg": GENERIC_NEGATIVE,
    "work_pos": WORK_POSITIVE, "work_pos_extra": WORK_POSITIVE_EXTRA,
    "work_neg": WORK_NEGATIVE, "work_neg_extra": WORK_NEGATIVE_EXTRA,
    "product_pos": PRODUCT_POSITIVE, "product_pos_extra": PRODUCT_POSITIVE_EXTRA,
    "product_neg": PRODUCT_NEGATIVE, "product_neg_extra": PRODUCT_NEGATIVE_EXTRA,
    "food_pos": FOOD_POSITIVE, "food_pos_extra": FOOD_POSITIVE_EXTRA,
    "food_neg": FOOD_NEGATIVE, "food_neg_extra": FOOD_NEGATIVE_EXTRA,
    "place_pos": PLACE_POSITIVE, "place_pos_extra": PLACE_POSITIVE_EXTRA,
    "place_neg": PLACE_NEGATIVE, "place_neg_extra": PLACE_NEGATIVE_EXTRA,
    "people_pos": PEOPLE_POSITIVE, "people_pos_extra": PEOPLE_POSITIVE_EXTRA,
    "people_neg": PEOPLE_NEGATIVE, "people_neg_extra": PEOPLE_NEGATIVE_EXTRA,
    "booster": BOOSTERS, "hedge": HEDGES, "neu_adj": NEUTRAL_ADJECTIVES,
}


def _adjectives(kind: str) -> dict[str, tuple[str, ...]]:
    """Productions for a domain whose aspects take ``kind`` adjectives
    (``"work"``, ``"product"``, ``"food"`` or ``"place"``): half generic, half specific."""
    return {
        "pos_adj": ("{generic_pos}", f"{{{kind}_pos}}"),
        "neg_adj": ("{generic_neg}", f"{{{kind}_neg}}"),
        "pos_extra": (f"{{{kind}_pos_extra}}",),
        "neg_extra": (f"{{{kind}_neg_extra}}",),
    }


_DOMAIN_KINDS = {"film": "work", "book": "work", "game": "work", "album": "work",
                 "product": "product", "restaurant": "food", "hotel": "place"}

_PRODUCTIONS: dict[str, tuple[str, ...]] = {
    # ---- adjectives by domain, and the phrases built from them ------------
    **{f"{domain}:{sym}": alts for domain, kind in _DOMAIN_KINDS.items()
       for sym, alts in _adjectives(kind).items()},
    "pos": ("{pos_adj}", "{pos_adj}", "{booster} {pos_adj}", "{pos_adj} and {pos_extra}",
            "{pos_extra} and {pos_adj}", "{pos_adj} and {pos_adj}"),
    "neg": ("{neg_adj}", "{neg_adj}", "{booster} {neg_adj}", "{neg_adj} and {neg_extra}",
            "{neg_extra} and {neg_adj}", "{neg_adj} and {neg_adj}"),
    "mild_neg": ("{hedge} {neg_adj}", "{neg_adj}", "{hedge} {neg_extra} and {neg_adj}"),
    "people_good": ("{people_pos}", "{booster} {people_pos}",
                    "{people_pos} and {people_pos_extra}"),
    "people_bad": ("{people_neg}", "{booster} {people_neg}",
                   "{people_neg_extra} and {people_neg}"),
    "room_good": ("{place_pos}", "{booster} {place_pos}", "{place_pos_extra} and {place_pos}"),
    "room_bad": ("{place_neg}", "{booster} {place_neg}", "{place_neg_extra} and {place_neg}"),
    "pos_verb": ("loved", "really enjoyed", "adored", "appreciated", "was impressed by",
                 "was delighted by", "fell in love with", "really liked", "enjoyed"),
    "neg_verb": ("hated", "disliked", "was disappointed by", "was annoyed by",
                 "really hated", "was bored by", "was frustrated by",
                 "was unhappy with", "did not like"),
    "superlative": ("best", "greatest", "most enjoyable", "most beautiful", "most exciting",
                    "most impressive", "most delightful"),
    "anti_superlative": ("worst", "most boring", "most disappointing", "dullest",
                         "most frustrating", "most annoying", "weakest"),

    # ---- shared building blocks ------------------------------------------
    "person": ("{first} {last}",),
    "$person": ("{person}",),
    "title": ("The {t_adj} {t_noun}", "The {t_noun} of {t_abstract}", "{t_adj} {t_noun}",
              "A {t_noun} in {month}", "The {t_noun}", "{t_abstract} and {t_abstract}",
              "The {t_noun}'s {t_noun}", "{t_adj} {t_abstract}"),
    "dish": ("{protein} {dish_type}", "{protein} {dish_type}", "{standalone_dish}"),
    "restaurant_name": ("{spice} {venue}", "The {venue_object}", "{first}'s {venue}",
                        "{spice} and {spice}", "The {venue_object} {venue}"),
    "hotel_name": ("the {hotel_word} {hotel_type}", "the {hotel_word} {hotel_type}",
                   "the {t_adj} {t_noun} {hotel_type}"),
    "aspect": ("{aspect_sg}", "{aspect_pl}"),
    # "the acting was" / "the visuals were", agreeing in number and tense.
    "aspect_be": ("the {aspect_sg} {be_sg}", "the {aspect_pl} {be_pl}"),
    "be_sg": ("was",), "be_pl": ("were",),
    "product:be_sg": ("is",), "product:be_pl": ("are",),
    "game:be_sg": ("is",), "game:be_pl": ("are",),
    "album:be_sg": ("is",), "album:be_pl": ("are",),

    # ---- what is being reviewed, per domain ------------------------------
    "film:$name": ("{title}",), "book:$name": ("{title}",), "game:$name": ("{title}",),
    "album:$name": ("{title}",), "restaurant:$name": ("{restaurant_name}",),
    "hotel:$name": ("{hotel_name}",), "product:$name": ("the {brand} {$product}",),
    "$product": ("{product_type}",),
    "film:item": ("film", "movie"), "book:item": ("book", "read"),
    "product:item": ("{$product}",), "restaurant:item": ("meal", "dinner", "restaurant"),
    "hotel:item": ("hotel", "stay", "place"), "game:item": ("game",),
    "album:item": ("album", "record"),
    "film:experience": ("films I have seen in years", "movies I have seen this year"),
    "book:experience": ("books I have read this year", "books I have read in a long time"),
    "product:experience": ("purchases I have made this year", "things I have bought online"),
    "restaurant:experience": ("meals I have had in {city}", "dinners I have had in years"),
    "hotel:experience": ("hotels I have stayed in", "places I have stayed in {city}"),
    "game:experience": ("games I have played this year", "games I have played in years"),
    "album:experience": ("albums I have heard this year", "records in my collection"),

    # ---- neutral openings: complete clauses ("leads") ---------------------
    "film:lead": (
        "I watched {$name} {when}",
        "We saw {$name} at the local cinema on {weekday}",
        "I finally got around to watching {$name}",
        "{$name} is the new {film_genre} from director {$person}",
        "My {companion} and I went to see {$name} {when}",
        "I streamed {$name} {when}",
        "I went into {$name} knowing almost nothing about it",
        "{$name} stars {$person} as a {role} in {city}",
        "The second film from {$person} follows a {role} in {city}",
        "I caught {$name} at a screening in {city}",
        "I rented {$name} on a whim {when}",
        "My {companion} picked {$name} for movie night",
    ),
    "book:lead": (
        "I read {$name} {when}",
        "I picked up {$name} at the airport in {city}",
        "{$name} is the new {book_genre} by {$person}",
        "My {companion} lent me {$name}",
        "I finished {$name} {when}",
        "We read {$name} for our book club in {month}",
        "{$name} by {$person} follows a {role} in {city}",
        "I listened to the audiobook of {$name} {when}",
        "I bought {$name} after seeing it in a shop window in {city}",
        "This is the {ordinal} book by {$person}",
    ),
    "product:lead": (
        "I bought this {$product} {duration} ago",
        "I ordered {$name} for my {room}",
        "We have been using this {$product} for {duration}",
        "I got this {$product} from my {companion} for my birthday",
        "I bought {$name} to replace an older model",
        "My {companion} and I have had {$name} for {duration}",
        "I picked up {$name} in {color}",
        "This is my {ordinal} {$product} from {brand}",
        "I ordered this {$product} online {when}",
    ),
    "restaurant:lead": (
        "I ordered the {dish} at {$name}",
        "We went to {$name} for {meal}",
        "My {companion} took me to {$name} {when}",
        "{$name} is a small place near the {landmark} in {city}",
        "We had {meal} at {$name} {when}",
        "I dropped by {$name} for {meal} on {weekday}",
        "We ordered takeout from {$name} {when}",
        "I booked a table for {few} at {$name}",
        "{$name} opened in {city} {when}",
        "We tried the {dish} and the {dessert} at {$name}",
    ),
    "hotel:lead": (
        "We stayed at {$name} in {city} for {few} nights",
        "I spent {few} nights at {$name} for a conference",
        "My {companion} and I booked {$name} {when}",
        "{$name} is a {number} minute walk from the {landmark}",
        "We checked into {$name} late on a {weekday}",
        "I stayed at {$name} in {city} {when}",
        "We booked {$name} for a weekend in {city}",
    ),
    "game:lead": (
        "I have spent {duration} with {$name}",
        "{$name} is a {game_genre} from the makers of {title}",
        "I tried {$name} on {platform} {when}",
        "My {companion} and I went through {$name} together",
        "I picked up {$name} in a sale {when}",
        "{$name} is a {game_genre} set in {city}",
        "I finished the main story of {$name} {when}",
    ),
    "album:lead": (
        "I listened to {$name} on the drive to {city}",
        "{$name} is the {ordinal} album from {$person}",
        "I have had {$name} on repeat since {weekday}",
        "{$person} recorded {$name} in {city} over {duration}",
        "I heard {$name} for the first time {when}",
        "My {companion} put on {$name} {when}",
        "On {$name}, {$person} trades {music_genre} for {music_genre}",
    ),

    # ---- neutral openings: subjects waiting for a predicate ---------------
    "film:subject": (
        "The new film from {$person}", "The {ordinal} season of {$name}",
        "The latest {film_genre} from {$person}", "{$name}, the new {film_genre},",
        "The {aspect_sg} in {$name}", "The extended edition of {$name}",
    ),
    "book:subject": (
        "The new {book_genre} by {$person}", "The first chapter of {$name}",
        "The {ordinal} book in the series", "{$name} by {$person}",
        "The audiobook of {$name}", "The ending of {$name}",
    ),
    "product:subject": (
        "This {$product}", "This {$product}", "The {brand} {$product}",
        "After {duration} of daily use, this {$product}",
        "The {color} version of this {$product}", "My new {$product}",
        "The {aspect_sg} on this {$product}",
    ),
    "restaurant:subject": (
        "The {dish} at {$name}", "The {dish} at {$name}", "The {dessert} at {$name}",
        "The new menu at {$name}", "The {aspect_sg} at {$name}",
        "Our {dish} from {$name}",
    ),
    "hotel:subject": (
        "Our room at {$name}", "Our stay at {$name}", "The {aspect_sg} at {$name}",
        "Our suite at {$name}", "The {aspect_sg} at {$name} in {city}",
    ),
    "game:subject": (
        "The {ordinal} chapter of {$name}", "The new {game_genre} from {$person}",
        "The {aspect_sg} in {$name}", "The sequel to {title}",
        "The {platform} version of {$name}",
    ),
    "album:subject": (
        "The new album from {$person}", "The {ordinal} album from {$person}",
        "The title track of {$name}", "The {music_genre} record {$person} made in {city}",
        "The deluxe edition of {$name}",
    ),

    # ---- sentences --------------------------------------------------------
    # A lead, a joiner and a clause make one sentence:
    # "I ordered the lamb curry at Saffron House and it was delicious."
    "joiner": ("and", "and", ", and", "and overall", ", and I have to say", "and by the end"),
    "pos_clause": (
        "it was {pos}", "{aspect_be} {pos}", "I {pos_verb} every minute of it",
        "I {pos_verb} it", "it is one of the {superlative} {experience}",
        "it turned out to be {pos}",
    ),
    "neg_clause": (
        "it was {neg}", "{aspect_be} {neg}", "I {neg_verb} it",
        "it is one of the {anti_superlative} {experience}",
        "it turned out to be {neg}", "I regret it",
    ),
    "neu_clause": (
        "it was {neu_adj}", "it was fine", "it was okay",
        "{aspect_be} {neu_adj}", "I have no strong feelings about it",
        "it was about what I expected",
    ),
    "subject_pos": ("{subject} {be_sg} {pos}", "{subject} turned out to be {pos}",
                    "{subject} {be_sg} {pos}, and I {pos_verb} it"),
    "subject_neg": ("{subject} {be_sg} {neg}", "{subject} turned out to be {neg}",
                    "{subject} {be_sg} {neg}, and I {neg_verb} it"),
    "subject_neu": ("{subject} {be_sg} {neu_adj}", "{subject} {be_sg} fine",
                    "{subject} {be_sg} okay, I guess"),
    "pos_sentence": (
        "{aspect_be} {pos}.", "{aspect_be} {pos}.", "I {pos_verb} the {aspect}.",
        "{aspect_be} {pos}, and {aspect_be} even better.",
        "It is one of the {superlative} {experience}.", "What a {generic_pos} {item}!",
        "{aspect_be} {pos}, and I {pos_verb} the {aspect}.",
        "My {companion} {pos_verb} it too.", "Everything about it felt {generic_pos}.",
        "{pos_domain}", "{pos_domain}", "{pos_domain}",
    ),
    "neg_sentence": (
        "{aspect_be} {neg}.", "{aspect_be} {neg}.", "I {neg_verb} the {aspect}.",
        "{aspect_be} {neg}, and {aspect_be} even worse.",
        "It is one of the {anti_superlative} {experience}.", "What a {generic_neg} {item}.",
        "{aspect_be} {neg}, and I {neg_verb} the {aspect}.",
        "My {companion} {neg_verb} it too.", "Everything about it felt {generic_neg}.",
        "{neg_domain}", "{neg_domain}", "{neg_domain}",
    ),
    "neu_sentence": (
        "{aspect_be} {neu_adj}.", "{aspect_be} fine, nothing more.",
        "{aspect_be} neither here nor there.", "{neu_domain}", "{neu_domain}",
        "{neu_domain}", "{neu_domain}",
    ),
    "mixed_sentence": (
        "{aspect_be} {pos}, but {aspect_be} {neg}.",
        "{aspect_be} {pos}, but {aspect_be} {mild_neg}.",
        "I {pos_verb} the {aspect}, but {aspect_be} {neg}.",
        "Although {aspect_be} {neg}, {aspect_be} {pos}.",
        "{aspect_be} {neg}; on the other hand, {aspect_be} {pos}.",
        "I {neg_verb} the {aspect}, but I {pos_verb} the {aspect}.",
        "{aspect_be} {pos}, although {aspect_be} {mild_neg}.",
    ),
    "pos_close": (
        "Highly recommended.", "I would {booster} recommend it.", "{pos_close_domain}",
        "{pos_close_domain}", "{pos_close_domain}", "Five stars.", "I loved it.",
        "I would happily recommend it to anyone.", "A real joy.",
    ),
    "neg_close": (
        "Not recommended.", "I would not recommend it.", "{neg_close_domain}",
        "{neg_close_domain}", "{neg_close_domain}", "One star.", "Avoid.",
        "What a waste.", "A real disappointment.",
    ),
    "neu_close": (
        "Three stars.", "It was okay.", "Make of that what you will.",
        "Your mileage may vary.", "I might give it another try at some point.",
        "It is fine for what it is.", "Nothing more, nothing less.",
        "I have mixed feelings about it.", "Two and a half stars.",
    ),
    "mixed_close": (
        "Three stars.", "I have mixed feelings about it.", "Your mileage may vary.",
        "Worth a try, with some reservations.", "Good, not great.",
        "I wanted to love it, but I only liked it.", "A flawed but enjoyable {item}.",
        "Not bad, not great.",
    ),

    # ---- domain-specific sentences ----------------------------------------
    "film:pos_domain": (
        "I laughed out loud more than once.",
        "{$person} is {pos} as the {role}.",
        "Easily the best {film_genre} I have seen this year.",
        "It is funny, warm and beautifully shot.",
        "The final scene left me smiling for days.",
        "The {aspect_sg} is {pos_adj}, and {$person} has never been better.",
        "I was hooked from the opening scene, and I loved every minute.",
    ),
    "film:neg_domain": (
        "I was so bored that I checked my watch every ten minutes.",
        "{$person} looks bored in the lead role.",
        "The jokes are lame and the story makes no sense.",
        "What a waste of two hours.",
        "I nearly walked out halfway through, it was that bad.",
        "The worst {film_genre} I have seen in a long time.",
        "Even a talented cast cannot save this awful script.",
    ),
    "film:neu_domain": (
        "It runs just under two hours.", "It was shot in {city} over {duration}.",
        "The story follows a {role} who moves to {city}.",
        "It is based on a {book_genre} by {person}.",
        "The film is in {language} with subtitles.",
        "It is a {film_genre} with a bit of {film_genre} mixed in.",
        "Most of it takes place in a single house.",
        "I watched it with my {companion}.",
    ),
    "film:pos_close_domain": ("I cannot wait to see it again.",
                              "Go see it on the big screen, you will love it.",
                              "I would gladly watch it again."),
    "film:neg_close_domain": ("Two hours of my life I will never get back.",
                              "Skip it, it is a waste of time.",
                              "Wait for it to hit streaming, or better yet, avoid it."),

    "book:pos_domain": (
        "I could not put it down.", "{$person} writes with {booster} beautiful clarity.",
        "The ending made me smile.",
        "I stayed up until two in the morning to finish it, and I loved every page.",
        "It is a {pos_adj} {book_genre}, and I loved every page.",
        "The {aspect_pl} are {pos}.", "Every chapter is a pleasure to read.",
    ),
    "book:neg_domain": (
        "I struggled to finish it.", "I gave up halfway through, it was so boring.",
        "The {aspect_pl} are {neg}.",
        "It reads like a bad first draft.", "Every chapter felt like a painful chore.",
        "The author clearly hates the main character.",
        "The twist is stupid and you can see it coming from page one.",
    ),
    "book:neu_domain": (
        "It is about {number} hundred pages long.",
        "The story is told from the point of view of a {role}.",
        "It is set in {city} in the {decade}.", "The chapters are short.",
        "I read it over {duration}.", "It was translated from {language}.",
        "It is the {ordinal} book in a series.",
        "Half of it is told in letters.",
    ),
    "book:pos_close_domain": ("I cannot wait to read the sequel.",
                              "I will be reading everything {$person} writes.",
                              "A wonderful read."),
    "book:neg_close_domain": ("I will not be reading the sequel, it was awful.",
                              "Do not waste your money on it.",
                              "A boring read."),

    "product:pos_domain": (
        "It works perfectly and looks great in my {room}.",
        "I use it every day and it has been excellent.",
        "It is worth every penny.", "The {aspect_sg} is {pos}.",
        "Setup took {number} minutes and it worked perfectly.",
        "It is quiet, sturdy and easy to clean, which I love.",
        "Better than my old {product_type} in every way.",
        "Customer service was {people_good} when I had a question.",
    ),
    "product:neg_domain": (
        "It broke after {duration}, which is ridiculous.",
        "It stopped working after {duration} and I was so disappointed.",
        "The {aspect_sg} is {neg}.",
        "It is loud, flimsy and hard to clean, which is awful.",
        "Customer service was {people_bad} when I asked for help.",
        "It feels cheap and poorly made.",
        "Worse than my old {product_type} in every way.",
    ),
    "product:neu_domain": (
        "It comes in {color}, {color} and {color}.", "It weighs about {number} pounds.",
        "I mostly use it in the {room}.", "It arrived in {few} days.",
        "It comes with a {few} year warranty.",
        "It replaced a {brand} {product_type} I had for years.",
        "It runs on a standard plug.", "It is about the size of a shoebox.",
    ),
    "product:pos_close_domain": ("I would buy it again in a heartbeat.",
                                 "Great value for the price.",
                                 "I already ordered a second one for my {companion}."),
    "product:neg_close_domain": ("I returned it after a week.",
                                 "Would not buy again, what a waste of money.",
                                 "Do not waste your money, buy a different brand."),

    "restaurant:pos_domain": (
        "The {dish} was {pos}.", "The {dessert} was {booster} delicious.",
        "Our waiter was {people_good} and made great suggestions.",
        "Every dish was full of flavor and the portions were generous.",
        "The {drink} was {pos_adj}.",
        "The staff were {people_good}.", "The {dining_room} was {room_good}.",
    ),
    "restaurant:neg_domain": (
        "The {dish} was {neg}.", "The {dessert} was stale and disgusting.",
        "Our waiter was {people_bad} and ignored us for twenty minutes.",
        "We waited an hour for cold food, which was ridiculous.",
        "The {drink} was {neg_adj}.",
        "The staff were {people_bad}.", "The {dining_room} was {room_bad}.",
    ),
    "restaurant:neu_domain": (
        "We had a table by the window.", "The menu changes every {season}.",
        "We waited about {number} minutes for a table.",
        "They do not take reservations on {weekday}.",
        "I had the {dish} and my {companion} had the {dish}.",
        "We shared the {dessert}.", "It is a short walk from the {landmark}.",
        "They only take cash.",
    ),
    "restaurant:pos_close_domain": ("We will definitely be back.",
                                    "I cannot wait to go back, it was wonderful.",
                                    "Best {dish} in {city}."),
    "restaurant:neg_close_domain": ("We will not be going back.",
                                    "Never again, what a disappointment.",
                                    "Eat anywhere else in {city}, seriously."),

    "hotel:pos_domain": (
        "The staff were {people_good} and went out of their way to help.",
        "The bed was so comfortable that I slept like a baby.",
        "The view from our balcony was {pos}.",
        "Breakfast was {pos}, with fresh {dessert} every morning.",
        "The room was spotless and {pos_adj}.", "The location is perfect.",
        "The front desk was {people_good}.",
    ),
    "hotel:neg_domain": (
        "The staff were {people_bad} and did not care.",
        "The bed was so uncomfortable that I barely slept.",
        "The room was dirty and the shower was broken.",
        "Breakfast was {neg_adj}, with stale bread and weak coffee.",
        "The walls were so thin that we heard everything, which was awful.",
        "The wifi was useless.", "The front desk was {people_bad}.",
    ),
    "hotel:neu_domain": (
        "Our room was on the {ordinal} floor.",
        "It is a {number} minute walk from the {landmark}.",
        "Breakfast is served from seven to ten.", "Check-in is at three.",
        "Parking costs extra.", "The rooms face the {landmark}.",
        "There is a bar in the lobby.",
    ),
    "hotel:pos_close_domain": ("We would happily stay here again.",
                               "I cannot wait to come back.",
                               "A perfect base for exploring {city}."),
    "hotel:neg_close_domain": ("We will never stay here again.",
                               "Book somewhere else, this place is awful.",
                               "Avoid this place."),

    "game:pos_domain": (
        "I have already put {number} hours into it and I love it.",
        "The {aspect_pl} are {pos}.", "It is the most fun I have had all year.",
        "The {aspect_sg} is {pos_adj}, and the {aspect_pl} are even better.",
        "Every level feels fresh and clever.", "I was hooked from the first hour, what a joy.",
    ),
    "game:neg_domain": (
        "It crashed {number} times in the first hour, which is unacceptable.",
        "The {aspect_pl} are {neg}.", "It is boring, buggy and far too long.",
        "The {aspect_sg} is {neg_adj}, and the {aspect_pl} are even worse.",
        "The microtransactions are ridiculous.",
        "I gave up after {number} hours because it was so tedious and frustrating.",
    ),
    "game:neu_domain": (
        "It took me about {number} hours to finish the main story.",
        "I played it on {platform}.", "There are {number} chapters.",
        "It supports online and local multiplayer.", "It is a {game_genre} at heart.",
        "You play as a {role} in {city}.",
    ),
    "game:pos_close_domain": ("A must play.", "I will definitely play it again.",
                              "Worth every penny."),
    "game:neg_close_domain": ("Wait for a sale, or skip it entirely.",
                              "Uninstalled, what a waste.", "Not worth the money."),

    "album:pos_domain": (
        "The {instrument} on the title track is {pos}.",
        "Every song is a winner.",
        "I have listened to it {number} times this week and I love it more every time.",
        "{$person} sounds {booster} confident and joyful.",
        "The {aspect_pl} are {pos}.",
        "It is the best {music_genre} record of the year.",
    ),
    "album:neg_domain": (
        "Every song sounds the same, and it gets boring fast.",
        "The {aspect_pl} are {neg}.",
        "{$person} sounds tired and bored.", "The {instrument} is {neg} and too loud.",
        "I skipped half the tracks because they were so dull.",
        "It is the worst {music_genre} record of the year.",
    ),
    "album:neu_domain": (
        "It has {number} tracks and runs about {number} minutes.",
        "It was recorded in {city} over {duration}.",
        "It leans more toward {music_genre} than their earlier work.",
        "There is a lot of {instrument} on it.",
        "It is their {ordinal} album.", "It came out in {month}.",
    ),
    "album:pos_close_domain": ("I cannot stop listening.", "A wonderful record.",
                               "Go listen to it right now, you will love it."),
    "album:neg_close_domain": ("I will not be listening again.", "A boring record.",
                               "Skip this one, it is a waste of time."),
}

#: All productions, symbol -> alternatives, including the terminal word lists.
GRAMMAR: Mapping[str, tuple[str, ...]] = {**_WORD_LISTS, **_PRODUCTIONS}

#: Domain -> probability that a review is about it.
DOMAINS: Mapping[str, float] = {
    "film": 0.2, "book": 0.15, "product": 0.2, "restaurant": 0.2,
    "hotel": 0.09, "game": 0.08, "album": 0.08,
}
#: Sentiment label -> probability.
SENTIMENTS: Mapping[str, float] = {"pos": 0.35, "neg": 0.35, "neu": 0.15, "mixed": 0.15}

MIN_WORDS, MAX_WORDS = 10, 60

# Within one review these symbols never repeat a value ("good and good").
_NO_REPEAT = frozenset({"aspect_sg", "aspect_pl", "generic_pos", "generic_neg",
                        "pos_adj", "neg_adj", "pos_extra", "neg_extra", "dish",
                        "spice", "t_noun", "t_abstract", "color", "music_genre"})
_SLOT = re.compile(r"\{([$\w:]+)\}")
_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])(?!(?:uni|use|usu|one)\w*)")
_SPACE_BEFORE_COMMA = re.compile(r" ([,;])")


class _Expander:
    """Expands templates for one review in one domain, keeping its ``$`` bindings."""

    def __init__(self, rng: random.Random, domain: str) -> None:
        self.rng = rng
        self.domain = domain
        self.bound: dict[str, str] = {}
        self.used: set[str] = set()

    def symbol(self, name: str) -> str:
        """Expands one grammar symbol (given without braces) to plain text."""
        if name in self.bound:
            return self.bound[name]
        key = f"{self.domain}:{name}"
        alternatives = GRAMMAR[key] if key in GRAMMAR else GRAMMAR[name]
        for _ in range(5):
            text = self.expand(self.rng.choice(alternatives))
            if name not in _NO_REPEAT or text not in self.used:
                break
        self.used.add(text)
        if name.startswith("$"):
            self.bound[name] = text
        return text

    def expand(self, template: str) -> str:
        """Expands every ``{symbol}`` in ``template``, left to right."""
        return _SLOT.sub(lambda m: self.symbol(m.group(1)), template)


def _finish_sentence(text: str) -> str:
    """Fixes "a"/"an" and comma spacing, capitalizes, and adds a final period."""
    text = _A_BEFORE_VOWEL.sub(lambda m: m.group(1) + "n ", text)
    text = _SPACE_BEFORE_COMMA.sub(r"\1", text)
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _weighted(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _review_once(rng: random.Random) -> str:
    """Draws one review without a length check: an optional opening, 1-3 body
    sentences and an optional closing verdict, at most 4 sentences in all."""
    domain = _weighted(rng, DOMAINS)
    sentiment = _weighted(rng, SENTIMENTS)
    ex = _Expander(rng, domain)
    side = rng.choice(("pos", "neg")) if sentiment == "mixed" else sentiment
    sentences: list[str] = []
    opening = rng.random()
    if opening < 0.35:  # "I watched The Silent Harbor last night."
        sentences.append(ex.expand("{lead}"))
    elif opening < 0.65:  # "I ordered the lamb curry at Saffron House and it was superb."
        sentences.append(ex.expand(f"{{lead}} {{joiner}} {{{side}_clause}}"))
    elif opening < 0.8:  # "This air fryer is superb."
        sentences.append(ex.expand(f"{{subject_{side}}}"))
    if sentiment == "mixed":
        body = ["{mixed_sentence}"] + rng.sample(
            ["{pos_sentence}", "{neg_sentence}", "{neu_sentence}", "{mixed_sentence}"], 2)
    else:
        body = [f"{{{sentiment}_sentence}}"] * 3
        if sentiment != "neu" and rng.random() < 0.3:
            body[rng.randrange(1, 3)] = "{neu_sentence}"  # a factual aside
    sentences += [ex.expand(t) for t in body[: rng.choice((1, 1, 2, 2, 3))]]
    if len(sentences) < 4 and rng.random() < 0.45:
        sentences.append(ex.expand(f"{{{sentiment}_close}}"))
    return " ".join(_finish_sentence(s) for s in sentences)


def generate_reviews(n: int, seed: int = 0) -> list[str]:
    """Samples ``n`` reviews from the grammar.

    Args:
        n: number of reviews.
        seed: seed of a private ``random.Random``; the same ``(n, seed)`` always
            gives the same list, and a longer list extends a shorter one.

    Returns:
        ``n`` reviews (duplicates are possible but rare), each of 1-4 sentences
        and ``MIN_WORDS``-``MAX_WORDS`` (10-60) whitespace-separated words.
    """
    rng = random.Random(seed)
    reviews: list[str] = []
    while len(reviews) < n:
        review = _review_once(rng)
        if MIN_WORDS <= len(review.split()) <= MAX_WORDS:
            reviews.append(review)
    return reviews


def generate_prompts(n: int, seed: int = 0) -> list[str]:
    """Samples ``n`` distinct, sentiment-neutral review openings.

    An opening is either a neutral lead ("I ordered the lamb curry at Saffron
    House") cut mid-way or followed by "and", or a subject still waiting for
    its predicate ("This air fryer", "The second season of The Glass Harbor").
    Reviews start with the same leads and subjects, so openings are
    in-distribution for the model, and none contains a sentiment word.

    Args:
        n: number of openings (the grammar can make tens of thousands).
        seed: seed of a private ``random.Random``.

    Returns:
        ``n`` distinct strings of 3-10 words without final punctuation, in draw order.
    """
    rng = random.Random(seed)
    prompts: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * n + 1000):
        if len(prompts) == n:
            break
        ex = _Expander(rng, _weighted(rng, DOMAINS))
        if rng.random() < 0.7:  # a lead: add "and", or cut it in its second half
            words = _finish_sentence(ex.expand("{lead}"))[:-1].split()
            if len(words) <= 9 and rng.random() < 0.4:
                words.append("and")
            elif len(words) > 3:
                words = words[: rng.randint(max(3, len(words) // 2), len(words) - 1)]
        else:  # a subject: "This air fryer"
            words = _finish_sentence(ex.expand("{subject}"))[:-1].split()
        prompt = " ".join(words).rstrip(",")
        if 3 <= len(words) <= 10 and prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    if len(prompts) < n:
        raise ValueError(f"the grammar produced only {len(prompts)} distinct openings")
    return prompts


def distinct_words(texts: list[str]) -> set[str]:
    """The distinct lower-cased words (letters, with inner ' or -) in ``texts``."""
    return {w for t in texts for w in re.findall(r"[a-z]+(?:['-][a-z]+)*", t.lower())}


if __name__ == "__main__":
    reviews = generate_reviews(5000, seed=0)
    print(f"{len(distinct_words(reviews))} distinct words in {len(reviews)} reviews")
    for review in reviews[:10]:
        print("-", review)
    for prompt in generate_prompts(10, seed=0):
        print(">", prompt)
