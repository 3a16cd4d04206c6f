"""The page: one short builder per tab that creates widgets and wires them to ``ui.logic`` through
``wiring.Wiring``; ``page.TABS`` registers the tabs, ``links`` connects them."""
