"""Request bodies and query strings of the Conversations API."""

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from ..items import check_items
from ..validation import Array, Object, Passthrough, String, field, quoted

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


def check_metadata(metadata):
    if metadata is None:
        return
    if len(metadata) > METADATA_MAX_KEYS:
        raise ValidationError(f"'metadata' holds at most {METADATA_MAX_KEYS} keys.", "metadata")
    for name, value in metadata.items():
        if len(name) > METADATA_MAX_KEY:
            raise ValidationError(f"metadata keys are at most {METADATA_MAX_KEY} characters.", f"metadata.{name}")
        if not isinstance(value, str) or len(value) > METADATA_MAX_VALUE:
            raise ValidationError(f"metadata values are strings of at most {METADATA_MAX_VALUE} characters.",
                                  f"metadata.{name}")


class CreateConversationSchema(Passthrough):
    items = field(Array, "an array")
    metadata = field(Object, "an object")

    @validates_schema(skip_on_field_errors=True)
    def check(self, data, **kwargs):
        check_metadata(data.get("metadata"))
        if data.get("items"):
            check_items(data["items"], "items")


class UpdateConversationSchema(Passthrough):
    metadata = field(Object, "an object", required=True)

    @validates_schema(skip_on_field_errors=True)
    def check(self, data, **kwargs):
        check_metadata(data.get("metadata"))


class AddItemsSchema(Passthrough):
    items = field(Array, "an array", required=True, allow_none=False)

    @validates_schema(skip_on_field_errors=True)
    def check(self, data, **kwargs):
        if not data["items"]:
            raise ValidationError("'items' must hold at least one item.", "items")
        if len(data["items"]) > 20:
            raise ValidationError("At most 20 items can be added at once.", "items")
        check_items(data["items"], "items")


class ListItemsQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=20, strict=False,
                           validate=validate.Range(1, 100, error="Invalid value for 'limit': expected 1 to 100."),
                           error_messages={"invalid": "expected an integer"})
    after = String(load_default=None)
    order = String(load_default="desc")
    include = fields.Raw(load_default=None)

    @validates_schema(skip_on_field_errors=True)
    def check(self, data, **kwargs):
        if data["order"] not in ("asc", "desc"):
            raise ValidationError(f"Invalid value for 'order': expected {quoted(('asc', 'desc'))}.", "order")


CREATE = CreateConversationSchema()
UPDATE = UpdateConversationSchema()
ADD_ITEMS = AddItemsSchema()
LIST_ITEMS = ListItemsQuery()
