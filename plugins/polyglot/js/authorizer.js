// Pier authorizer plugin in JavaScript (componentize-js), world `authorizer`.
//
// Policy (needs no host capability):
//   * pull: allowed for everyone;
//   * push / delete: only user `alice`, only on repositories under `alice/`;
//   * everything else: deny("polyglot: <action> not allowed for <who>").
// authenticate() always answers not-handled, so Pier checks its own users.
//
// WIT -> JS (jco conventions): enums are strings ('pull'), variants are
// { tag, val }, option<string> is a string or undefined, a result's ok is the
// return value and its err is thrown.

function who(subject) {
  switch (subject.tag) {
    case 'user':
      return subject.val.name;
    case 'robot':
      return 'robot$' + subject.val.name;
    default:
      return 'anonymous';
  }
}

export function authorize(request) {
  const { subject, action } = request;
  const repository = request.repository ?? '';
  if (action === 'pull') {
    return { tag: 'allow' };
  }
  if ((action === 'push' || action === 'delete') &&
      subject.tag === 'user' && subject.val.name === 'alice' &&
      repository.startsWith('alice/')) {
    return { tag: 'allow' };
  }
  return { tag: 'deny', val: `polyglot: ${action} not allowed for ${who(subject)}` };
}

export function authenticate(_credentials) {
  // result<identity, auth-error>: throwing the err payload returns `err(not-handled)`.
  throw { tag: 'not-handled' };
}
