"""The HTML reports of training and scoring runs, and their plots."""
