"""The decision core, without files, environment variables or asyncio: text normalisation, the prototype
index, n-gram features, the head and its fitting, scorers, thresholds and policies, the router and the
conversation rule. Everything here takes arrays and objects in and gives arrays and decisions back."""
