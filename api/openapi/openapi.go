// Package openapi embeds Apache Airflow's stable REST API specification
// (v1.yaml, OpenAPI 3.0, Apache License 2.0), the contract Trellis's REST
// API follows: the implemented endpoints use its paths, methods, field
// names, status codes and error bodies, and the API tests validate every
// response against it.
package openapi

import (
	_ "embed"
	"fmt"

	"github.com/getkin/kin-openapi/openapi3"
)

// Spec is the YAML text of Airflow's stable REST API specification,
// unchanged but for a note under its license header saying where it comes
// from.
//
//go:embed v1.yaml
var Spec []byte

// Load parses Spec into a kin-openapi document.
func Load() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(Spec)
	if err != nil {
		return nil, fmt.Errorf("load Airflow OpenAPI specification: %w", err)
	}
	return doc, nil
}
