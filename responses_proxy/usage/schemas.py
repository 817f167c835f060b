"""The query string of ``GET /v1/usage``."""

from marshmallow import INCLUDE, Schema, ValidationError, fields, post_load, validates_schema

from ..validation import String
from .service import WindowError, parse_groups, window

# A key sees its own usage only: grouping by key or account would tell it nothing of its own.
KEY_GROUPS = ("model", "day", "hour")


class UsageQuery(Schema):
    """Loads ``request.args.to_dict(flat=False)``: every parameter arrives as a list of values."""

    class Meta:
        unknown = INCLUDE  # refused below, with a message that lists what is taken

    since = fields.List(String(), load_default=lambda: ["24h"],
                        metadata={"description": "Start: a duration back from now (30m, 24h, 7d) or an ISO 8601 "
                                                 "date or time (UTC unless it names a zone). Default 24h."})
    until = fields.List(String(), load_default=list, metadata={"description": "End, in the same forms; default now."})
    group_by = fields.List(String(), load_default=list,
                           metadata={"description": "model, day and/or hour: repeated or comma-separated."})

    @validates_schema(pass_original=True)
    def check_parameters(self, data, original, **kwargs):
        for name in original:
            if name not in self.fields:
                raise ValidationError(f"Unrecognized query parameter: '{name}'. This endpoint takes "
                                      f"{', '.join(self.fields)}.", name)
        for name in ("since", "until"):
            if len(data[name]) > 1:
                raise ValidationError(f"Invalid value for '{name}': give it once.", name)

    @post_load
    def resolve(self, data, **kwargs):
        try:
            groups = parse_groups(data["group_by"], KEY_GROUPS)
        except ValueError as exc:
            raise ValidationError(f"Invalid value for 'group_by': {exc}.", "group_by") from None
        try:
            since, until = window(data["since"][0], data["until"][0] if data["until"] else None)
        except WindowError as exc:
            raise ValidationError(f"Invalid value for '{exc.name}': {exc}.", exc.name) from None
        return {"since": since, "until": until, "group_by": groups}


USAGE_QUERY = UsageQuery()
