; Ruby tags. Earlier patterns win when two capture the same name.

[
  (method name: (_) @name.definition.method)
  (singleton_method name: (_) @name.definition.method)
] @definition.method

(alias name: (_) @name.definition.method) @definition.method

(class
  name: [
    (constant) @name.definition.class
    (scope_resolution name: (_) @name.definition.class)
  ]) @definition.class

(singleton_class value: (constant) @name.definition.class) @definition.class

(module
  name: [
    (constant) @name.definition.module
    (scope_resolution name: (_) @name.definition.module)
  ]) @definition.module

(assignment left: (constant) @name.definition.constant) @definition.constant

; references

(call
  method: (identifier) @name.reference.call
  (#not-match? @name.reference.call "^(require|require_relative|load|lambda|proc|attr_reader|attr_writer|attr_accessor|include|extend|private|public|protected)$"))

(superclass (constant) @name.reference.class)

(superclass (scope_resolution name: (constant) @name.reference.class))

(call receiver: (constant) @name.reference.class)

(call receiver: (scope_resolution name: (constant) @name.reference.class))

(scope_resolution name: (constant) @name.reference.class)
