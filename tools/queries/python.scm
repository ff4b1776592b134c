; Python tags. Earlier patterns win when two capture the same name, so the
; specific shapes (decorated, methods) come before the general ones.
; Decorated definitions use the decorated_definition node as the definition.

(class_definition
  body: (block
    (decorated_definition
      definition: (function_definition
        name: (identifier) @name.definition.method)) @definition.method))

(class_definition
  body: (block
    (function_definition
      name: (identifier) @name.definition.method) @definition.method))

(decorated_definition
  definition: (class_definition
    name: (identifier) @name.definition.class)) @definition.class

(decorated_definition
  definition: (function_definition
    name: (identifier) @name.definition.function)) @definition.function

(class_definition
  name: (identifier) @name.definition.class) @definition.class

(function_definition
  name: (identifier) @name.definition.function) @definition.function

(module
  (expression_statement
    (assignment
      left: (identifier) @name.definition.constant)) @definition.constant)

; references

(call
  function: [
    (identifier) @name.reference.call
    (attribute attribute: (identifier) @name.reference.call)
  ])

(decorator [
  (identifier) @name.reference.call
  (attribute attribute: (identifier) @name.reference.call)
])

(class_definition
  superclasses: (argument_list [
    (identifier) @name.reference.class
    (attribute attribute: (identifier) @name.reference.class)
  ]))

(type (identifier) @name.reference.type)

(generic_type (identifier) @name.reference.type)

(type (attribute attribute: (identifier) @name.reference.type))
