"""The shapes of what the gateway answers, for the OpenAPI document (requests have their own
schemas, which validate them: ``responses.schemas``, ``conversations.schemas``)."""

from marshmallow import INCLUDE, Schema, fields


class Open(Schema):
    """An object that may carry more fields than those named (the upstream's, new ones)."""

    class Meta:
        unknown = INCLUDE


class ErrorSchema(Open):
    message = fields.String(required=True, metadata={"description": "What went wrong, for people."})
    type = fields.String(required=True, metadata={"example": "invalid_request_error"})
    code = fields.String(required=True, allow_none=True, metadata={"example": "model_not_found"})
    param = fields.String(required=True, allow_none=True,
                          metadata={"description": "The request field at fault (``tools[2].type``), if any."})
    resets_at = fields.Integer(metadata={"description": "usage_limit_reached: when a usable account is back "
                                                        "(epoch seconds)."})
    resets_in_seconds = fields.Integer(metadata={"description": "usage_limit_reached: seconds until then."})
    plan_type = fields.String(metadata={"description": "usage_limit_reached: the upstream account's plan."})


class ErrorEnvelopeSchema(Schema):
    """Every error, whatever the route or status: the OpenAI error envelope."""

    error = fields.Nested(ErrorSchema, required=True)


class ResponseSchema(Open):
    """A response object: the upstream's final one, its ``output`` never empty when items were produced."""

    id = fields.String(required=True, metadata={"example": "resp_0123"})
    object = fields.String(metadata={"example": "response"})
    created_at = fields.Float()
    status = fields.String(metadata={"example": "completed"})
    model = fields.String()
    output = fields.List(fields.Dict(), required=True)
    usage = fields.Dict(allow_none=True)
    error = fields.Dict(allow_none=True)


class ModelSchema(Schema):
    id = fields.String(required=True, metadata={"example": "gpt-5.2"})
    object = fields.String(required=True, metadata={"enum": ["model"]})
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)


class ModelListSchema(Schema):
    object = fields.String(required=True, metadata={"enum": ["list"]})
    data = fields.List(fields.Nested(ModelSchema), required=True)


class ConversationSchema(Schema):
    id = fields.String(required=True, metadata={"example": "conv_0123"})
    object = fields.String(required=True, metadata={"enum": ["conversation"]})
    created_at = fields.Integer(required=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class ConversationDeletedSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["conversation.deleted"]})
    deleted = fields.Boolean(required=True)


class ItemSchema(Open):
    """A conversation item, as stored (input items in their normalized form, output items as
    the upstream made them) with its ``id``."""

    id = fields.String(required=True)
    type = fields.String()


class ItemListSchema(Schema):
    object = fields.String(required=True, metadata={"enum": ["list"]})
    data = fields.List(fields.Nested(ItemSchema), required=True)
    first_id = fields.String(required=True, allow_none=True)
    last_id = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})


class ReadinessSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ready", "unready"]})
    checks = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True,
                         metadata={"description": "database, schema, encryption, accounts: each with `ok` and, "
                                                  "when not, the `error` that says why."})


class UsageRowSchema(Open):
    requests = fields.Integer(required=True)
    errors = fields.Integer(required=True)
    input_tokens = fields.Integer(required=True)
    cached_tokens = fields.Integer(required=True)
    output_tokens = fields.Integer(required=True)
    reasoning_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


class UsageSchema(Schema):
    object = fields.String(required=True, metadata={"enum": ["usage"]})
    key_id = fields.String(required=True)
    since = fields.Float(required=True)
    until = fields.Float(required=True)
    group_by = fields.List(fields.String(), required=True)
    data = fields.List(fields.Nested(UsageRowSchema), required=True,
                       metadata={"description": "One row per group (with its model, day and/or hour)."})
