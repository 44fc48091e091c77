"""The smallest eryx function: greets whoever the event names."""


def handler(event, context):
    name = (event or {}).get("name", "world")
    return {"message": f"Hello, {name}!", "request_id": context.request_id}
