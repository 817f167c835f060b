"""Request bodies and query strings of the Conversations API."""

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from ..items import check_added, check_items, check_storable
from ..validation import Array, Object, Passthrough, String, check_sizes, field, quoted

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
ADD_MAX_ITEMS = 20


def check_metadata_entries(metadata):
    for name, value in metadata.items():
        if len(name) > METADATA_MAX_KEY:
            raise ValidationError({name: [f"metadata keys are at most {METADATA_MAX_KEY} characters."]})
        if not isinstance(value, str) or len(value) > METADATA_MAX_VALUE:
            raise ValidationError({name: [f"metadata values are strings of at most {METADATA_MAX_VALUE} characters."]})


def metadata_field(**kwargs):
    return field(Object, "an object", validate=[
        validate.Length(max=METADATA_MAX_KEYS, error=f"'metadata' holds at most {METADATA_MAX_KEYS} keys."),
        check_metadata_entries], **kwargs)


class CreateConversationSchema(Passthrough):
    """``max_items`` is ``RESPONSES_PROXY_MAX_INPUT_ITEMS``."""

    def __init__(self, max_items, **kwargs):
        super().__init__(**kwargs)
        self.max_items = max_items

    def load(self, data, **kwargs):
        check_sizes(data, ("items",), self.max_items)
        return super().load(data, **kwargs)

    items = field(Array, "an array")
    metadata = metadata_field()

    @validates_schema(skip_on_field_errors=True)
    def check(self, data, **kwargs):
        if data.get("items"):
            check_items(data["items"], "items")
            check_storable(data["items"], "items")
            check_added(data["items"])


class UpdateConversationSchema(Passthrough):
    metadata = metadata_field(required=True)


class AddItemsSchema(Passthrough):
    items = field(Array, "an array", required=True, allow_none=False, validate=[
        validate.Length(min=1, error="'items' must hold at least one item."),
        validate.Length(max=ADD_MAX_ITEMS, error=f"At most {ADD_MAX_ITEMS} items can be added at once.")])

    @validates_schema(skip_on_field_errors=True)
    def check(self, data, **kwargs):
        check_items(data["items"], "items")
        check_storable(data["items"], "items")
        check_added(data["items"])


class ListItemsQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=20, strict=False,
                           validate=validate.Range(1, 100, error="Invalid value for 'limit': expected 1 to 100."),
                           error_messages={"invalid": "expected an integer"})
    after = String(load_default=None)
    order = String(load_default="desc", validate=validate.OneOf(
        ("asc", "desc"), error=f"Invalid value for 'order': expected {quoted(('asc', 'desc'))}."))
    include = fields.Raw(load_default=None)


UPDATE = UpdateConversationSchema()
ADD_ITEMS = AddItemsSchema()
LIST_ITEMS = ListItemsQuery()
