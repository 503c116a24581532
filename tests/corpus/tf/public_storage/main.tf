resource "azurerm_resource_group" "rg" {
  name     = "rg-public-demo"
  location = "westeurope"
}

resource "azurerm_storage_account" "public" {
  name                            = "publicdemostorage"
  resource_group_name             = azurerm_resource_group.rg.name
  location                        = azurerm_resource_group.rg.location
  account_tier                    = "Standard"
  account_replication_type        = "LRS"
  allow_nested_items_to_be_public = true
  public_network_access_enabled   = true
}
