"""Selection methods as a plugin package would define them, for the registry's tests (loaded by entry points)."""

from paser_assets.methods import SelectionMethod

FIRST_TWO = SelectionMethod("first_two", lambda candidates, budget: candidates.frame["sample_id"][:2], "Two rows.")
PAIR = (
    SelectionMethod("plugin_a", lambda candidates, budget: [], "A."),
    SelectionMethod("plugin_b", lambda candidates, budget: [], "B."),
)
NOT_A_METHOD = "paser"
RANDOM_AGAIN = SelectionMethod("random", lambda candidates, budget: [], "A second 'random'.")
