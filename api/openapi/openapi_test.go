package openapi

import (
	"bytes"
	"context"
	"testing"
)

func TestSpecLoadsAndKeepsItsLicense(t *testing.T) {
	if !bytes.HasPrefix(Spec, []byte("# Licensed to the Apache Software Foundation (ASF)")) ||
		!bytes.Contains(Spec[:2000], []byte("http://www.apache.org/licenses/LICENSE-2.0")) {
		t.Error("v1.yaml lost its Apache License header")
	}
	if !bytes.Contains(Spec[:3000], []byte("Apache Airflow's stable REST API specification")) {
		t.Error("v1.yaml lacks the note saying where it comes from")
	}
	doc, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Errorf("the specification does not validate: %v", err)
	}
	if doc.Info.Title != "Airflow API (Stable)" {
		t.Errorf("title %q", doc.Info.Title)
	}
	for _, p := range []string{"/dags", "/dags/{dag_id}/dagRuns", "/dags/~/dagRuns/~/taskInstances/list", "/health"} {
		if doc.Paths.Value(p) == nil {
			t.Errorf("path %s missing", p)
		}
	}
}
