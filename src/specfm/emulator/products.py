"""Names of the emulator stage's products, in one place for the rule file, the scripts and the tests
(import-light on purpose: the Snakefile reads it at parse time, before any job imports numpy)."""

# Figures of results/emulator/figures/{name}.png (steps.draw_figures draws them; each has a caption
# workflow/report/emulator_{name}.rst).
FIGURES = ("vs_size", "vs_steps", "residuals", "example", "correlation", "finetune", "inference")
