"""``clawpen report``: the deployment's documents (topology diagram, operations manual, emergency
plan, change log) generated as one self-contained HTML file, and a PDF through Chromium."""
