"""Seeded synthetic demo dataset: a film/book/product-like catalog and a realistic click log.

The catalog has twelve categories with four sub-themes each; every sub-theme has its own
vocabulary (who the story is about, where it happens, what it is about) so a sentence encoder
places items of a sub-theme near each other. Titles carry a release year, and a title used
twice is a remake from another year. Some works are series ("The Silent Orbit (1994)",
"The Silent Orbit II (1997)", ...) whose parts share their (category, sub-theme). Item
popularity is Zipf-like, and a share of the catalog is cold: no one has clicked it yet.

The log models what real ones (MovieLens and the like) show:

- **Power-law activity.** Clicks per user follow a log-logistic law truncated to the
  ``interactions_per_user`` bounds: a median of a couple of dozen, a few users with only one to
  three clicks, and a long tail of heavy users with thousands.
- **Taste streaks.** Each user has one to three latent (category, sub-theme) tastes and clicks in
  sittings; a sitting stays in one taste (its sub-theme, then its category once that is used
  up), with about 15% popular items from anywhere mixed in.
- **Series in order.** A user who reaches any part of a series starts at the first part they
  have not seen and often goes straight on to the next.
- **Bulk sessions.** Timestamps are non-decreasing per user; sittings are about a day apart,
  clicks inside one minutes apart, and a share of them fall in the same second as the click
  before (a bulk rating session). A sequel always comes strictly after its predecessor.

``demo_meta.json`` records every user's tastes, every item's (category, sub-theme) pairs, the
series (item ids in part order) and the cold items, so relevance can be measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from retrieval.catalog import CATALOG_SCHEMA, INTERACTIONS_SCHEMA, IngestReport, write_dataset

__all__ = ["DEMO_CATEGORIES", "DEMO_META_FILE", "make_demo_dataset"]

DEMO_META_FILE = "demo_meta.json"

_DEFAULT_N_ITEMS = 3000
_DEFAULT_MAX_PER_USER = 2600
"""Upper activity bound when ``interactions_per_user`` is not given (capped by the warm catalog)."""
_ACTIVITY_SCALE = 22.0
"""Median of the activity law (clicks above the lower bound) before truncation."""
_ACTIVITY_TAIL = 1.05
"""Power-law exponent of the activity law at both ends; smaller means a heavier tail."""
_TASTE_SHARE = 0.85
_SECOND_CATEGORY_SHARE = 0.15
_ZIPF_EXPONENT = 1.0
_TASTE_ZIPF_EXPONENT = 0.8
"""Zipf exponent of how many users hold each (category, sub-theme) taste; some genres draw more."""
_COLD_SHARE = 0.07
"""Share of the catalog no one clicks (fewer when a history of the upper bound needs them)."""
_SERIES_START_SHARE = 0.035
"""Chance that a new title starts a series rather than standing alone."""
_MAX_SERIES_PARTS = 4
_SERIES_CONTINUE = 0.7
"""Chance that a user goes straight on to the next part of a series."""
_MEAN_SITTING = 8.0
"""Mean number of clicks drawn for one sitting in one taste."""
_TIE_SHARE = 0.15
"""Chance that a click inside a sitting is logged in the same second as the one before."""
_START_TS = 1_700_000_000
_MINUTE = 60
_DAY = 86_400
_RELEASE_YEARS = (1950, 2013)
"""Range of a work's first release year; each later part comes one to four years after."""


@dataclass(frozen=True)
class _SubTheme:
    name: str
    subjects: tuple[str, ...]
    settings: tuple[str, ...]
    plots: tuple[str, ...]
    hook: str  # verb phrase used when this sub-theme flavours an item of another category


@dataclass(frozen=True)
class _Category:
    name: str
    forms: tuple[str, ...]
    adjectives: tuple[str, ...]
    title_adjectives: tuple[str, ...]
    title_nouns: tuple[str, ...]
    subthemes: tuple[_SubTheme, ...]


def _sub(name: str, subjects: str, settings: str, plots: str, hook: str) -> _SubTheme:
    """Build a sub-theme from ';'-separated phrase lists (keeps the vocabulary table compact)."""
    return _SubTheme(
        name,
        tuple(s.strip() for s in subjects.split(";")),
        tuple(s.strip() for s in settings.split(";")),
        tuple(s.strip() for s in plots.split(";")),
        hook,
    )


_CATALOG_VOCABULARY: tuple[_Category, ...] = (
    _Category(
        "Sci-Fi",
        ("space drama", "science-fiction novel", "sci-fi thriller"),
        ("slow-burn", "cerebral", "mind-bending", "haunting"),
        ("Silent", "Distant", "Hollow", "Fading", "Crimson", "Frozen"),
        ("Orbit", "Horizon", "Signal", "Nebula", "Colony", "Machine"),
        (
            _sub(
                "space exploration",
                "a lone astronaut; the crew of a deep-space survey ship; a young navigator",
                "aboard a derelict station orbiting Jupiter; on a generation ship bound for a "
                "distant star; at the edge of an uncharted nebula",
                "where a failing life-support system forces impossible choices; racing to decode "
                "a signal from beyond the solar system; as supplies dwindle between the planets",
                "drifts into the silence of deep space",
            ),
            _sub(
                "artificial intelligence",
                "a sentient android; a reclusive robotics engineer; a rogue AI",
                "in a neon-lit megacity run by algorithms; inside a secret corporate AI lab; in "
                "a near-future world of thinking machines",
                "questioning what it means to be human; as machine consciousness awakens and "
                "rebels; while a superintelligence rewrites its own code",
                "asks whether machines can feel",
            ),
            _sub(
                "time travel",
                "a physicist who builds a time machine; a time-displaced soldier; two siblings "
                "lost in time",
                "caught in a loop between 1985 and 2085; in a laboratory where the past bleeds "
                "into the future; jumping between centuries",
                "trying to undo a catastrophe without breaking the timeline; chasing paradoxes "
                "across alternate histories; racing a clock that keeps resetting",
                "bends time with a paradox or two",
            ),
            _sub(
                "dystopia",
                "a young rebel; a factory worker who starts asking questions; a disillusioned "
                "enforcer",
                "in a totalitarian surveillance state; in a walled city after ecological "
                "collapse; under the rule of a ruthless technocratic regime",
                "leading an uprising against the ones in power; exposing the lies behind a "
                "perfect society; fighting to survive rationing, curfews and propaganda",
                "pushes back against an oppressive regime",
            ),
        ),
    ),
    _Category(
        "Romance",
        ("love story", "romantic drama", "romance novel"),
        ("tender", "bittersweet", "heartwarming", "swoon-worthy"),
        ("Summer", "Secret", "Eternal", "Moonlit", "Tender", "Sweet"),
        ("Kiss", "Heart", "Promise", "Letters", "Dance", "Vow"),
        (
            _sub(
                "period romance",
                "a headstrong heiress; a penniless duke; a clever governess",
                "in Regency-era London ballrooms; on a sprawling Victorian country estate; "
                "during the glittering social season of 1813",
                "defying family expectations for a forbidden marriage; trading witty letters "
                "that turn into courtship; torn between duty, scandal and true love",
                "lets a slow courtship blossom",
            ),
            _sub(
                "second-chance love",
                "two former high-school sweethearts; a widowed florist; estranged lovers",
                "in a small coastal town; back in their hometown for one summer; at a lakeside "
                "wedding",
                "rekindling a love they thought was lost; learning to open their hearts again "
                "after heartbreak; facing the feelings they never confessed",
                "rekindles an old flame",
            ),
            _sub(
                "holiday romance",
                "a burned-out city lawyer; a lonely travel blogger; a shy bakery owner",
                "on a sun-drenched Greek island; in a snowy alpine village at Christmas; during "
                "a whirlwind getaway in Paris",
                "falling for a charming stranger in a summer fling; finding love where they "
                "least expected it; sharing a first kiss under the mistletoe",
                "sparks an unexpected love affair",
            ),
            _sub(
                "star-crossed lovers",
                "two young lovers from rival families; a musician and a princess; a soldier "
                "and a nurse",
                "in a city divided by feuding clans; across a bitter class divide; separated by "
                "oceans and love letters",
                "risking everything for a passionate love affair; facing heartbreak, longing and "
                "sacrifice; whose love is forbidden from the start",
                "weaves in a forbidden love affair",
            ),
        ),
    ),
    _Category(
        "Thriller",
        ("psychological thriller", "crime thriller", "suspense novel"),
        ("taut", "twisty", "pulse-pounding", "gripping"),
        ("Dark", "Buried", "Broken", "Deadly", "Cold", "Blind"),
        ("Witness", "Alibi", "Trap", "Cipher", "Conspiracy", "Target"),
        (
            _sub(
                "detective mystery",
                "a hard-boiled homicide detective; a rookie police inspector; a retired "
                "investigator",
                "on the rain-soaked streets of a corrupt city; in a quiet village hiding a "
                "murder; inside a police precinct riddled with secrets",
                "hunting a serial killer who leaves cryptic clues; solving a locked-room murder; "
                "following a trail of evidence, suspects and alibis",
                "hides a murder mystery at its core",
            ),
            _sub(
                "espionage",
                "a disavowed spy; a double agent; a CIA intelligence analyst",
                "in Cold War Berlin; across the embassies and safe houses of Europe; deep inside "
                "a foreign intelligence agency",
                "racing to stop stolen nuclear codes from being sold; unmasking a mole at the "
                "heart of the agency; running from assassins who know her every move",
                "weaves in a tense espionage subplot",
            ),
            _sub(
                "heist",
                "a crew of expert thieves; a legendary safecracker; a smooth con artist",
                "planning to rob a casino vault; targeting a diamond exchange in Antwerp; inside "
                "a heavily guarded bank",
                "pulling off one last impossible job; when the perfect robbery goes wrong; "
                "double-crossing each other before the getaway",
                "builds toward a daring robbery",
            ),
            _sub(
                "psychological suspense",
                "a woman with no memory of the night before; an unreliable narrator; a paranoid "
                "husband",
                "in a suburban house full of secrets; in an isolated cabin during a snowstorm; "
                "inside a private psychiatric clinic",
                "as gaslighting and lies blur reality; whose marriage hides a deadly obsession; "
                "uncovering the truth about a missing sister",
                "keeps you guessing with mind games",
            ),
        ),
    ),
    _Category(
        "Comedy",
        ("comedy", "comic novel", "sitcom-style comedy"),
        ("laugh-out-loud", "quirky", "irreverent", "goofy"),
        ("Awkward", "Big", "Crazy", "Lucky", "Hapless", "Zany"),
        ("Weekend", "Wedding", "Roommates", "Disaster", "Family", "Vacation"),
        (
            _sub(
                "workplace comedy",
                "a hapless office manager; a team of clueless coworkers; an overconfident intern",
                "at a failing paper company; in a chaotic open-plan startup office; during the "
                "company's disastrous team-building retreat",
                "bungling every meeting and office prank along the way; scheming to win employee "
                "of the month; hiding a huge blunder from the boss",
                "pokes fun at office life",
            ),
            _sub(
                "family comedy",
                "a chaotic family of six; a frazzled stay-at-home dad; three bickering siblings",
                "on a cross-country road trip in a battered minivan; during a Thanksgiving "
                "dinner that goes off the rails; at their grandparents' anniversary party",
                "where every plan ends in slapstick chaos; learning to laugh at their own "
                "mishaps; surviving embarrassing relatives and pranks",
                "adds a dose of family slapstick",
            ),
            _sub(
                "buddy comedy",
                "two mismatched best friends; a pair of slacker roommates; an uptight accountant "
                "and a party animal",
                "on a bachelor weekend gone hilariously wrong; stuck together on a botched road "
                "trip; hiding out from a loan shark",
                "getting into one ridiculous scrape after another; bonding over bad decisions and "
                "worse jokes; trying to recover a lost wedding ring",
                "throws in a pair of bumbling sidekicks",
            ),
            _sub(
                "satire",
                "an incompetent politician; a vain celebrity; a clueless tech billionaire",
                "in an absurd election campaign; in the middle of a media circus; during a "
                "ludicrous corporate scandal",
                "lampooning power, fame and greed; skewering modern politics with deadpan wit; "
                "as spin doctors make everything worse",
                "skewers its targets with satire",
            ),
        ),
    ),
    _Category(
        "Documentary",
        ("documentary", "documentary series", "nonfiction feature"),
        ("eye-opening", "investigative", "award-winning", "intimate"),
        ("Untold", "Inside", "Vanishing", "Real", "Living", "Changing"),
        ("Truth", "Planet", "Story", "Evidence", "Footage", "Record"),
        (
            _sub(
                "nature and wildlife",
                "wildlife filmmakers; a marine biologist; migrating herds of wildebeest",
                "across the Serengeti plains; beneath the coral reefs of the Pacific; in the "
                "Arctic tundra",
                "following predators and prey through the seasons; capturing rare animal "
                "behaviour on camera; documenting the fragile balance of ecosystems",
                "lingers on stunning wildlife footage",
            ),
            _sub(
                "true crime",
                "investigative journalists; a wrongly convicted man; the families of the victims",
                "reexamining a decades-old cold case; inside a small-town courtroom; through "
                "police archives and interviews",
                "revealing evidence the jury never heard; piecing together what really happened; "
                "exposing flaws in the justice system",
                "draws on real court records and interviews",
            ),
            _sub(
                "climate and environment",
                "climate scientists; environmental activists; farmers facing drought",
                "on melting glaciers in Greenland; in communities threatened by rising seas; in "
                "rainforests cleared for cattle",
                "measuring the impact of global warming; campaigning for renewable energy and "
                "conservation; showing how carbon emissions reshape the planet",
                "raises urgent questions about climate change",
            ),
            _sub(
                "science and discovery",
                "pioneering physicists; engineers and researchers; the inventors of the internet",
                "inside the world's largest particle accelerator; at research labs and "
                "universities; in Silicon Valley garages",
                "explaining the breakthroughs that changed the world; following the race to "
                "build quantum computers; interviewing the minds behind the discoveries",
                "explains the real science behind it",
            ),
        ),
    ),
    _Category(
        "Horror",
        ("horror film", "horror novel", "supernatural chiller"),
        ("terrifying", "blood-curdling", "eerie", "nightmarish"),
        ("Haunted", "Cursed", "Wicked", "Rotting", "Black", "Unholy"),
        ("House", "Ritual", "Curse", "Cellar", "Woods", "Doll"),
        (
            _sub(
                "haunted house",
                "a grieving family; a paranormal investigator; a young couple",
                "moving into a decaying Victorian mansion; in a house where the walls whisper at "
                "night; in an abandoned asylum",
                "tormented by vengeful ghosts; as a malevolent spirit reveals itself; uncovering "
                "the bloody history of the previous owners",
                "has a ghost or two lurking in the shadows",
            ),
            _sub(
                "slasher",
                "a group of teenagers; summer camp counsellors; the last survivor",
                "at a remote summer camp; on a night of Halloween parties; in a cabin deep in "
                "the woods",
                "stalked by a masked killer with a machete; picked off one by one; fighting to "
                "survive until dawn",
                "adds a masked killer to the mix",
            ),
            _sub(
                "demonic possession",
                "a troubled priest; a possessed child; a reluctant exorcist",
                "in a remote parish; in a cursed farmhouse; in a crumbling Gothic cathedral",
                "battling a demon summoned by an occult ritual; performing a desperate exorcism; "
                "as satanic forces grow stronger",
                "flirts with the demonic and the occult",
            ),
            _sub(
                "creature feature",
                "a small fishing town; stranded scientists; a team of cave divers",
                "on a fog-bound island; in an underground cave system; in a swamp",
                "hunted by a monstrous creature; as mutated beasts crawl from the depths; facing "
                "a flesh-eating horror",
                "unleashes a monstrous creature",
            ),
        ),
    ),
    _Category(
        "Animation",
        ("animated feature", "animated adventure", "cartoon series"),
        ("colourful", "whimsical", "charming", "family-friendly"),
        ("Little", "Brave", "Magic", "Tiny", "Jolly", "Sparkling"),
        ("Dragon", "Bunny", "Kingdom", "Friends", "Balloon", "Acorn"),
        (
            _sub(
                "talking animals",
                "a curious young fox; a band of talking farm animals; a clumsy penguin",
                "in an enchanted forest; on a bustling barnyard; in a zoo after closing time",
                "learning the value of friendship; on a quest to find their way home; singing "
                "and dancing their way out of trouble",
                "features a cast of talking animals",
            ),
            _sub(
                "fairy-tale princess",
                "a spirited princess; a young sorceress; a royal heir",
                "in a magical kingdom; in a glittering ice palace; beyond the castle walls",
                "breaking a wicked witch's spell; discovering her hidden magical powers; saving "
                "the kingdom with courage and song",
                "sprinkles in fairy-tale magic",
            ),
            _sub(
                "toys come alive",
                "a group of toys; a tiny cleaning robot; a lost teddy bear",
                "in a child's bedroom; on a junkyard planet; in a toy store at night",
                "who come alive when no one is watching; searching for the kid who loved them; "
                "on a playful adventure to be reunited",
                "brings toys to life",
            ),
            _sub(
                "anime adventure",
                "a teenage mecha pilot; a spirited schoolgirl; a young ninja",
                "in a hand-drawn anime world of floating islands; in a Tokyo haunted by forest "
                "spirits; in a hidden ninja village",
                "training to master elemental powers; befriending gentle spirits; battling giant "
                "robots to save the world",
                "borrows the style of Japanese anime",
            ),
        ),
    ),
    _Category(
        "Western",
        ("western", "frontier saga", "cowboy drama"),
        ("dusty", "rugged", "sun-baked", "gritty"),
        ("Lonesome", "Dusty", "Copper", "Desperate", "Red", "Rawhide"),
        ("Rider", "Trail", "Gun", "Canyon", "Frontier", "Sheriff"),
        (
            _sub(
                "outlaws and gunslingers",
                "a notorious outlaw; a vengeful gunslinger; a bounty hunter",
                "in a lawless frontier town; on the dusty streets of a mining boomtown; across "
                "the Arizona desert",
                "facing a high-noon showdown; seeking revenge for his murdered family; hunting "
                "a gang of bank robbers with a price on their heads",
                "ends with a high-noon showdown",
            ),
            _sub(
                "cattle ranch",
                "a weathered cowboy; a widowed rancher; a young cattle hand",
                "driving longhorns along the Chisholm Trail; on a sprawling Texas ranch; across "
                "the open range",
                "defending the herd from rustlers; fighting a greedy land baron for water "
                "rights; braving stampedes and prairie storms",
                "rides along with cowboys and cattle",
            ),
            _sub(
                "frontier pioneers",
                "a family of homesteaders; pioneer women; a wagon train",
                "on the Oregon Trail; building a homestead on the Great Plains; in a settlement "
                "in Montana territory",
                "surviving harsh winters and hardship; carving out a new life in the wild West; "
                "as the railroad pushes west",
                "follows pioneers heading west",
            ),
            _sub(
                "frontier lawmen",
                "a stubborn sheriff; a U.S. marshal; a Texas Ranger",
                "keeping the peace in a saloon town; tracking fugitives through canyon country; "
                "in a railroad town",
                "standing alone against a gang of desperadoes; bringing outlaws to justice; "
                "protecting townsfolk from hired guns",
                "pins on a sheriff's badge",
            ),
        ),
    ),
    _Category(
        "Cooking",
        ("cookbook", "cooking show", "food memoir"),
        ("mouth-watering", "hearty", "delicious", "homestyle"),
        ("Rustic", "Sweet", "Spicy", "Simple", "Savory", "Homemade"),
        ("Kitchen", "Table", "Feast", "Oven", "Pantry", "Recipe"),
        (
            _sub(
                "baking and pastry",
                "a self-taught pastry chef; an artisan baker; a home baker",
                "in a tiny Parisian patisserie; in a family bakery kitchen; at a village bake-off",
                "perfecting sourdough bread, croissants and fruit tarts; sharing recipes for "
                "cakes, cookies and pies; mastering butter, flour and sugar",
                "comes with a batch of baking recipes",
            ),
            _sub(
                "Italian home cooking",
                "an Italian grandmother; a Tuscan chef; a fresh pasta maker",
                "in a farmhouse kitchen in Tuscany; in a trattoria in Naples; at a long Sunday "
                "family lunch",
                "handmaking pasta, risotto and tomato sauces; cooking with olive oil, basil and "
                "garlic; slow-simmering a rich ragù",
                "serves up Italian pasta dishes",
            ),
            _sub(
                "street food and spice",
                "a street-food vendor; a chef exploring Asian cuisine; a curry master",
                "at night markets in Bangkok; on the busy streets of Mumbai; in a hawker centre "
                "in Singapore",
                "cooking fiery curries, noodles and dumplings; balancing chilli, ginger and "
                "lemongrass; grinding homemade spice blends",
                "is full of spicy street food",
            ),
            _sub(
                "healthy vegetarian",
                "a plant-based chef; a nutritionist; a vegan cook",
                "in a sunny farm-to-table kitchen; at a farmers' market; in a vegetable garden",
                "creating quick, healthy vegetarian meals; cooking seasonal vegetables, grains "
                "and salads; meal-prepping nutritious grain bowls",
                "adds healthy vegetarian recipes",
            ),
        ),
    ),
    _Category(
        "Travel",
        ("travel guide", "travelogue", "travel series"),
        ("breathtaking", "adventurous", "wanderlust-inducing", "scenic"),
        ("Open", "Far", "Wandering", "Northern", "Blue", "Sunlit"),
        ("Road", "Journey", "Passport", "Coast", "Map", "Voyage"),
        (
            _sub(
                "backpacking Southeast Asia",
                "a solo backpacker; two friends on a gap year; a budget traveller",
                "through Vietnam, Thailand and Cambodia; island-hopping in Indonesia; along the "
                "Mekong river",
                "sharing tips on hostels, buses and budget itineraries; finding hidden beaches "
                "and temples off the tourist trail; trekking through rice terraces",
                "detours through backpacker hostels in Asia",
            ),
            _sub(
                "European city breaks",
                "a seasoned travel writer; a couple on a weekend city break; an architecture lover",
                "in Rome, Prague and Barcelona; across the capitals of Europe by train; in the "
                "cafés and museums of Vienna",
                "with guides to landmarks, cafés and museums; mapping the best walking routes "
                "and neighbourhoods; hunting for hidden squares and local restaurants",
                "stops off in European cities",
            ),
            _sub(
                "national parks and hiking",
                "a long-distance hiker; a family in a camper van; a mountain guide",
                "through Yellowstone, Yosemite and the Rockies; on the trails of Patagonia; in "
                "Iceland's highlands",
                "with advice on camping, hiking trails and scenic drives; chasing waterfalls, "
                "glaciers and the northern lights; sleeping under the stars",
                "takes a hike through national parks",
            ),
            _sub(
                "luxury resorts and cruises",
                "a luxury travel critic; honeymooners; retirees on the trip of a lifetime",
                "aboard a Mediterranean cruise ship; at overwater villas in the Maldives; at "
                "five-star resorts in the Caribbean",
                "reviewing spas, suites and fine dining; planning the perfect relaxing getaway; "
                "ranking the best beach resorts",
                "checks into a luxury resort",
            ),
        ),
    ),
    _Category(
        "Sports",
        ("sports drama", "sports documentary", "sports biography"),
        ("inspiring", "hard-hitting", "triumphant", "rousing"),
        ("Fast", "Unbeaten", "Second", "Winning", "Home", "Golden"),
        ("Season", "Game", "Victory", "Goal", "Champion", "Match"),
        (
            _sub(
                "football",
                "an underdog football club; a star striker; a struggling coach",
                "in a rust-belt town; in the English Premier League; at the World Cup",
                "chasing an unlikely championship; fighting relegation on the last day of the "
                "season; scoring the winning goal in stoppage time",
                "cheers on a football team",
            ),
            _sub(
                "boxing",
                "a washed-up boxer; a young kickboxer; a mixed martial arts fighter",
                "in a gritty gym in Philadelphia; training for a title bout; in underground "
                "fight clubs",
                "training for the fight of his life; going the distance against the heavyweight "
                "champion; overcoming injury to step back into the ring",
                "steps into the boxing ring",
            ),
            _sub(
                "basketball",
                "a high-school basketball team; an NBA rookie; a streetball legend",
                "on the courts of inner-city Chicago; in the NBA playoffs; in a small-town gym "
                "in Indiana",
                "making a run for the state title; hitting the buzzer-beater shot; learning "
                "teamwork from a tough coach",
                "shoots hoops on the basketball court",
            ),
            _sub(
                "Olympic endurance",
                "a marathon runner; an Olympic swimmer; a road cyclist",
                "at the Olympic Games; on the roads of the Tour de France; through mountain "
                "ultramarathons",
                "pushing past exhaustion for a gold medal; training at dawn for years; racing "
                "against the clock and a doping scandal",
                "trains for an Olympic race",
            ),
        ),
    ),
    _Category(
        "History",
        ("historical epic", "history book", "period drama"),
        ("sweeping", "meticulously researched", "epic", "richly detailed"),
        ("Ancient", "Fallen", "Imperial", "Forgotten", "Royal", "Iron"),
        ("Empire", "Crown", "Legion", "Dynasty", "Throne", "Siege"),
        (
            _sub(
                "ancient Rome",
                "a Roman general; a gladiator; an ambitious senator",
                "in the Roman Empire; in the Colosseum; during Caesar's wars in Gaul",
                "as the Republic falls and emperors rise; fighting for freedom in the arena; "
                "chronicling legions, conquest and betrayal",
                "reaches back to ancient Rome",
            ),
            _sub(
                "World War II",
                "an Allied soldier; a French Resistance fighter; Bletchley Park codebreakers",
                "on the beaches of Normandy in 1944; in occupied Paris; during the Battle of "
                "Britain",
                "recounting the battles that ended the war; smuggling refugees past Nazi "
                "patrols; cracking the Enigma code",
                "is set against the backdrop of World War II",
            ),
            _sub(
                "medieval kingdoms",
                "a medieval knight; a Viking chieftain; a young queen",
                "in a castle during the Hundred Years' War; raiding the coasts of England; in "
                "feudal Europe",
                "fighting for the throne in a war of succession; riding out on crusade; amid "
                "plague, siege and court intrigue",
                "has knights and castles from the Middle Ages",
            ),
            _sub(
                "age of revolutions",
                "the Founding Fathers; a revolutionary printer; a Continental Army soldier",
                "in colonial Boston; at Valley Forge; in Paris during the French Revolution",
                "declaring independence from the British crown; storming the Bastille; drafting "
                "a constitution",
                "revisits the age of revolutions",
            ),
        ),
    ),
)

DEMO_CATEGORIES: dict[str, tuple[str, ...]] = {
    c.name: tuple(s.name for s in c.subthemes) for c in _CATALOG_VOCABULARY
}
"""Category name → its sub-theme names, as used in ``demo_meta.json``."""


@dataclass(frozen=True)
class _Items:
    """The generated catalog, indexed by item position (item id minus one)."""

    titles: list[str]
    texts: list[str]
    categories: list[list[str]]
    pairs: list[list[tuple[int, int]]]
    """(category, sub-theme) index pairs; the first is the item's main theme."""
    series: list[list[int]]
    """Item positions of every series, in part order."""


@dataclass(frozen=True)
class _ClickModel:
    """What users' clicks are drawn from: popularity, taste pools and series membership."""

    popularity: np.ndarray
    """Zipf-like weight per item; 0 for cold items."""
    warm: np.ndarray
    """Positions of the items that can be clicked."""
    pair_pools: dict[tuple[int, int], np.ndarray]
    category_pools: dict[int, np.ndarray]
    series_of: np.ndarray
    """Series index per item, -1 for a standalone title."""
    series: list[list[int]]


def make_demo_dataset(
    out_dir: Path,
    *,
    n_items: int = _DEFAULT_N_ITEMS,
    n_users: int = 500,
    seed: int = 0,
    interactions_per_user: tuple[int, int] | None = None,
) -> IngestReport:
    """Write a deterministic synthetic dataset (catalog, interactions, ``demo_meta.json``).

    The same arguments give the same tables. Item ids are "1".."n_items", user ids
    "1".."n_users"; every user has distinct clicks, their number following the truncated
    power law of the module docstring between the inclusive ``interactions_per_user`` bounds
    (default: 1 to 2,600, capped by the warm catalog), with non-decreasing timestamps. Files are
    written atomically through :func:`retrieval.catalog.write_dataset`. Raises ``ValueError``
    for counts that cannot be satisfied.
    """
    if n_items < 1 or n_users < 1:
        raise ValueError("n_items and n_users must be at least 1")
    low, high = _activity_bounds(n_items, interactions_per_user)
    rng = np.random.default_rng(seed)
    items = _make_items(rng, n_items)
    n_cold = min(round(_COLD_SHARE * n_items), n_items - high)
    model = _click_model(rng, items, n_cold)
    counts = _activity_counts(rng, n_users, low, high)
    interactions, tastes = _make_interactions(rng, counts, model)
    meta = {
        "seed": seed,
        "n_items": n_items,
        "n_users": n_users,
        "n_interactions": interactions.num_rows,
        "interactions_per_user": [low, high],
        "taste_share": _TASTE_SHARE,
        "categories": {name: list(subs) for name, subs in DEMO_CATEGORIES.items()},
        "users": tastes,
        "items": {
            str(i + 1): [_pair_meta(pair) for pair in item_pairs]
            for i, item_pairs in enumerate(items.pairs)
        },
        "series": [[str(i + 1) for i in parts] for parts in items.series],
        "cold_items": [str(i + 1) for i in np.flatnonzero(model.popularity == 0)],
    }
    content = json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8")
    return write_dataset(
        out_dir, _catalog_table(items), interactions, extra_files={DEMO_META_FILE: content}
    )


def _activity_bounds(n_items: int, bounds: tuple[int, int] | None) -> tuple[int, int]:
    """The (low, high) clicks-per-user bounds; the default leaves room for the cold items."""
    if bounds is None:
        return 1, min(_DEFAULT_MAX_PER_USER, n_items - round(_COLD_SHARE * n_items))
    low, high = bounds
    if not 1 <= low <= high <= n_items:
        raise ValueError(
            f"interactions_per_user must satisfy 1 <= low <= high <= n_items, got {low, high}"
        )
    return low, high


def _activity_counts(rng: np.random.Generator, n_users: int, low: int, high: int) -> np.ndarray:
    """Clicks per user: a log-logistic law truncated to ``[low, high]``, in random user order.

    Users take the law's quantiles at evenly spaced levels, so even a few hundred users show
    the heavy tail the law promises rather than whatever one draw of it gives.
    """
    span = high - low + 1
    top = 1.0 / (1.0 + (span / _ACTIVITY_SCALE) ** -_ACTIVITY_TAIL)
    levels = (np.arange(n_users) + 0.5) / n_users * top
    extra = _ACTIVITY_SCALE * (levels / (1.0 - levels)) ** (1.0 / _ACTIVITY_TAIL)
    counts = low + np.minimum(np.floor(extra), span - 1).astype(np.int64)
    return rng.permutation(counts)


def _make_items(rng: np.random.Generator, n_items: int) -> _Items:
    """Titles, texts and themes of ``n_items`` items; series parts get ascending positions."""
    titles = [""] * n_items
    texts = [""] * n_items
    categories: list[list[str]] = [[] for _ in range(n_items)]
    pairs_of: list[list[tuple[int, int]]] = [[] for _ in range(n_items)]
    series: list[list[int]] = []
    used: set[str] = set()
    slots = rng.permutation(n_items)
    start = 0
    for length in _plan_works(rng, n_items):
        positions = sorted(int(p) for p in slots[start : start + length])
        start += length
        pairs = _draw_pairs(rng)
        work_titles = _work_titles(rng, _CATALOG_VOCABULARY[pairs[0][0]], length, used)
        for part, position in enumerate(positions):
            titles[position] = work_titles[part]
            texts[position] = _make_text(rng, pairs)
            if part:
                texts[position] += f" The sequel to {work_titles[part - 1]}."
            categories[position] = [_CATALOG_VOCABULARY[c].name for c, _ in pairs]
            pairs_of[position] = pairs
        if length > 1:
            series.append(positions)
    return _Items(titles, texts, categories, pairs_of, series)


def _plan_works(rng: np.random.Generator, n_items: int) -> list[int]:
    """Number of parts of each work: mostly 1, sometimes a series of 2..4; sums to n_items."""
    lengths: list[int] = []
    remaining = n_items
    while remaining:
        length = 1
        if rng.random() < _SERIES_START_SHARE:
            length = int(rng.integers(2, _MAX_SERIES_PARTS + 1))
        lengths.append(min(length, remaining))
        remaining -= lengths[-1]
    return lengths


def _draw_pairs(rng: np.random.Generator) -> list[tuple[int, int]]:
    """A main (category, sub-theme) pair and, for some items, a second one of another category."""
    n_categories = len(_CATALOG_VOCABULARY)
    c = int(rng.integers(n_categories))
    pairs = [(c, int(rng.integers(4)))]
    if rng.random() < _SECOND_CATEGORY_SHARE:
        c2 = int((c + rng.integers(1, n_categories)) % n_categories)
        pairs.append((c2, int(rng.integers(4))))
    return pairs


def _work_titles(
    rng: np.random.Generator, category: _Category, n_parts: int, used: set[str]
) -> list[str]:
    """Titles of a work's parts, "Stem (1994)", "Stem II (1997)", ...; none already in ``used``.

    The new titles are added to ``used``.
    """
    while True:
        stem = _make_title(rng, category)
        year = int(rng.integers(*_RELEASE_YEARS))
        titles = []
        for part in range(1, n_parts + 1):
            titles.append(f"{stem} ({year})" if part == 1 else f"{stem} {_roman(part)} ({year})")
            year += int(rng.integers(1, 5))
        if used.isdisjoint(titles):
            used.update(titles)
            return titles


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _make_title(rng: np.random.Generator, category: _Category) -> str:
    adjective = _pick(rng, category.title_adjectives)
    noun = _pick(rng, category.title_nouns)
    pattern = int(rng.integers(3))
    if pattern == 0:
        return f"The {adjective} {noun}"
    if pattern == 1:
        return f"{adjective} {noun}"
    other = _pick(rng, tuple(n for n in category.title_nouns if n != noun))
    return f"{noun} of the {adjective} {other}"


def _make_text(rng: np.random.Generator, pairs: list[tuple[int, int]]) -> str:
    c, s = pairs[0]
    category = _CATALOG_VOCABULARY[c]
    theme = category.subthemes[s]
    adjective = _pick(rng, category.adjectives)
    article = "An" if adjective[0] in "aeiou" else "A"
    text = (
        f"{article} {adjective} {_pick(rng, category.forms)} about {_pick(rng, theme.subjects)} "
        f"{_pick(rng, theme.settings)}, {_pick(rng, theme.plots)}."
    )
    for c2, s2 in pairs[1:]:
        text += f" It also {_CATALOG_VOCABULARY[c2].subthemes[s2].hook}."
    return text


def _roman(n: int) -> str:
    numerals = ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))
    out = ""
    for value, numeral in numerals:
        while n >= value:
            out += numeral
            n -= value
    return out


def _pair_meta(pair: tuple[int, int]) -> dict[str, str]:
    c, s = pair
    return {
        "category": _CATALOG_VOCABULARY[c].name,
        "subtheme": _CATALOG_VOCABULARY[c].subthemes[s].name,
    }


def _click_model(rng: np.random.Generator, items: _Items, n_cold: int) -> _ClickModel:
    """Zipf popularity over a random ranking, ``n_cold`` standalone items made cold, and pools."""
    n_items = len(items.titles)
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** _ZIPF_EXPONENT
    series_of = np.full(n_items, -1, dtype=np.int64)
    for index, parts in enumerate(items.series):
        series_of[parts] = index
    standalone = np.flatnonzero(series_of < 0)
    cold = rng.choice(standalone, size=min(n_cold, standalone.size), replace=False)
    popularity[cold] = 0.0
    warm = popularity > 0
    pair_pools = _taste_pools(items.pairs, len(_CATALOG_VOCABULARY), warm)
    category_pools = {
        c: np.unique(np.concatenate([pair_pools[(c, s)] for s in range(4)]))
        for c in range(len(_CATALOG_VOCABULARY))
    }
    return _ClickModel(
        popularity, np.flatnonzero(warm), pair_pools, category_pools, series_of, items.series
    )


def _taste_pools(
    item_pairs: list[list[tuple[int, int]]], n_categories: int, warm: np.ndarray
) -> dict[tuple[int, int], np.ndarray]:
    """(category, sub-theme) → positions of the warm items carrying that pair."""
    pools: dict[tuple[int, int], list[int]] = {
        (c, s): [] for c in range(n_categories) for s in range(4)
    }
    for index, pairs in enumerate(item_pairs):
        if warm[index]:
            for pair in pairs:
                pools[pair].append(index)
    return {pair: np.asarray(members, dtype=np.int64) for pair, members in pools.items()}


def _make_interactions(
    rng: np.random.Generator, counts: np.ndarray, model: _ClickModel
) -> tuple[pa.Table, dict[str, list[dict[str, Any]]]]:
    """Every user's tastes and click history, as the interactions table and the tastes meta."""
    all_pairs = [(c, s) for c in range(len(_CATALOG_VOCABULARY)) for s in range(4)]
    appeal = 1.0 / (rng.permutation(len(all_pairs)) + 1.0) ** _TASTE_ZIPF_EXPONENT
    users: list[str] = []
    item_rows: list[np.ndarray] = []
    ts_rows: list[np.ndarray] = []
    tastes_meta: dict[str, list[dict[str, Any]]] = {}
    for user, n in enumerate(counts, 1):
        n_tastes = int(rng.integers(1, 4))
        chosen = rng.choice(len(all_pairs), size=n_tastes, replace=False, p=appeal / appeal.sum())
        weights = rng.dirichlet(np.ones(n_tastes))
        tastes = [all_pairs[int(i)] for i in chosen]
        tastes_meta[str(user)] = [
            {**_pair_meta(pair), "weight": round(float(w), 4)}
            for pair, w in zip(tastes, weights, strict=True)
        ]
        picked, new_sitting, sequel = _user_history(rng, int(n), tastes, weights, model)
        users.extend([str(user)] * picked.size)
        item_rows.append(picked)
        ts_rows.append(_timestamps(rng, new_sitting, sequel))
    n_rows = len(users)
    table = pa.Table.from_arrays(
        [
            pa.array(users, pa.string()),
            pa.array([str(i + 1) for i in np.concatenate(item_rows)], pa.string()),
            pa.array(np.concatenate(ts_rows).astype(np.int64)),
            pa.array(["click"] * n_rows, pa.string()),
            pa.array(np.ones(n_rows, dtype=np.float32)),
        ],
        schema=INTERACTIONS_SCHEMA,
    )
    return table, tastes_meta


def _user_history(
    rng: np.random.Generator,
    n: int,
    tastes: list[tuple[int, int]],
    weights: np.ndarray,
    model: _ClickModel,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` distinct items in click order, flagging sitting starts and parts after the first.

    Sittings pick a taste by its weight; the user goes through the sitting's candidates, and
    one that belongs to a series is replaced by the first part they have not seen, so the parts
    of a series they click are always a prefix, clicked in order.
    """
    taken = np.zeros(model.popularity.size, dtype=bool)
    progress: dict[int, int] = {}
    items: list[int] = []
    new_sitting: list[bool] = []
    sequel: list[bool] = []
    while len(items) < n:
        taste = tastes[int(rng.choice(len(tastes), p=weights))]
        length = min(int(rng.geometric(1.0 / _MEAN_SITTING)), n - len(items))
        candidates = _sitting_candidates(rng, taste, length, taken, model)
        clicked, later_part = _sitting_clicks(rng, candidates, taken, progress, model)
        keep = min(len(clicked), n - len(items))
        items += clicked[:keep]
        sequel += later_part[:keep]
        new_sitting += [True] + [False] * (keep - 1)
    return np.asarray(items), np.asarray(new_sitting), np.asarray(sequel)


def _sitting_candidates(
    rng: np.random.Generator,
    taste: tuple[int, int],
    length: int,
    taken: np.ndarray,
    model: _ClickModel,
) -> np.ndarray:
    """``length`` distinct unseen items: ~85% from the taste, the rest popular ones from anywhere.

    The taste's sub-theme comes first; once the user has seen all of it, its category, and once
    that is used up too, the whole catalog. Never empty while an unseen warm item is left.
    """
    blocked = taken.copy()
    n_taste = int(rng.binomial(length, _TASTE_SHARE))
    drawn: list[np.ndarray] = []
    for pool, quota in (
        (model.pair_pools[taste], n_taste),
        (model.category_pools[taste[0]], n_taste),
        (model.warm, length),
    ):
        # Each wider pool tops up what the narrower ones before it could not fill.
        picked = _draw(rng, pool, blocked, model.popularity, quota - sum(d.size for d in drawn))
        blocked[picked] = True
        drawn.append(picked)
    return rng.permutation(np.concatenate(drawn))


def _draw(
    rng: np.random.Generator, pool: np.ndarray, blocked: np.ndarray, popularity: np.ndarray, k: int
) -> np.ndarray:
    """Up to ``k`` distinct items of ``pool`` that are not ``blocked``, weighted by popularity."""
    free = pool[~blocked[pool]]
    k = min(k, free.size)
    if k <= 0:
        return free[:0]
    weights = popularity[free]
    return rng.choice(free, size=k, replace=False, p=weights / weights.sum())


def _sitting_clicks(
    rng: np.random.Generator,
    candidates: np.ndarray,
    taken: np.ndarray,
    progress: dict[int, int],
    model: _ClickModel,
) -> tuple[list[int], list[bool]]:
    """The sitting's clicked items and, per click, whether it is a series part after the first.

    Marks the clicked items in ``taken`` and the parts seen per series in ``progress``.
    """
    clicked: list[int] = []
    later_part: list[bool] = []
    for candidate in candidates:
        if taken[candidate]:
            continue
        index = int(model.series_of[candidate])
        if index < 0:
            taken[candidate] = True
            clicked.append(int(candidate))
            later_part.append(False)
            continue
        parts = model.series[index]
        seen = progress.get(index, 0)
        while True:
            taken[parts[seen]] = True
            clicked.append(parts[seen])
            later_part.append(seen > 0)
            seen += 1
            if seen == len(parts) or rng.random() >= _SERIES_CONTINUE:
                break
        progress[index] = seen
    return clicked, later_part


def _timestamps(
    rng: np.random.Generator, new_sitting: np.ndarray, sequel: np.ndarray
) -> np.ndarray:
    """Non-decreasing click times: about a day between sittings, minutes inside one.

    A click inside a sitting shares the second of the one before with ``_TIE_SHARE`` chance
    (a bulk rating session), except a later series part, which always comes strictly after.
    """
    n = new_sitting.size
    between = np.exp(rng.normal(np.log(_DAY), 1.0, n))
    within = np.exp(rng.normal(np.log(20 * _MINUTE), 1.0, n))
    gaps = np.where(new_sitting, between, within).astype(np.int64) + 1
    gaps[(rng.random(n) < _TIE_SHARE) & ~new_sitting & ~sequel] = 0
    gaps[0] = 0
    return _START_TS + int(rng.integers(0, 90 * _DAY)) + np.cumsum(gaps)


def _catalog_table(items: _Items) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([str(i) for i in range(1, len(items.titles) + 1)], pa.string()),
            pa.array(items.titles, pa.string()),
            pa.array(items.texts, pa.string()),
            pa.array(items.categories, pa.list_(pa.string())),
        ],
        schema=CATALOG_SCHEMA,
    )
