from atelier import errors


def test_codes_are_unique() -> None:
    classes = errors._all_subclasses(errors.AtelierError)
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))


def test_round_trip_through_payload() -> None:
    err = errors.SandboxNotFound("sandbox sb-x does not exist", details={"id": "sb-x"})
    back = errors.from_payload(err.to_payload(), 404)
    assert type(back) is errors.SandboxNotFound
    assert back.message == err.message and back.details == {"id": "sb-x"}


def test_unknown_code_falls_back_on_status() -> None:
    assert type(errors.from_payload({"code": "brand_new", "message": "m"}, 409)) is errors.Conflict
    assert (
        type(errors.from_payload({"code": "brand_new", "message": "m"}, 599)) is errors.AtelierError
    )


def test_status_table() -> None:
    assert errors.InvalidPath.status == 400
    assert errors.AuthenticationError.status == 401
    assert errors.FilePermissionDenied.status == 403
    assert errors.FileNotFound.status == 404
    assert errors.InvalidStateTransition.status == 409
    assert errors.ValidationFailed.status == 422
    assert errors.RateLimited.status == 429
    assert errors.RuntimeFailure.status == 500
    assert errors.RuntimeUnavailable.status == 503
