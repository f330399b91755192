"""The roomcast showcase: an issue tracker whose pages update live (run ``app.py``)."""
